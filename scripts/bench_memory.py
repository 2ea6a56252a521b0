"""Memory of a training run's whole process tree (``python scripts/bench.py memory``; issue 18).

Measured: the proportional set size (PSS, the ``Pss:`` line of ``/proc/<pid>/smaps_rollup``)
summed over the driver and every one of its descendants, found through the parent links
of ``/proc/*/stat``. With an embedded Ray instance those are gcs_server, raylet, Ray's
agents and monitors, the actor workers and rlfleet's watchdog. PSS divides each shared
page among the processes that map it, so shared libraries count once over the tree and
the sum is the tree's share of RAM; summed RSS would count libtorch once per worker.

Ours is ``scripts/train.py --algo ppo --env CartPole-v1 --num-env-runners 2`` (the tuned
example), measured right after its console line of iteration ``--iterations`` while it
trains on; ``--reference-checkout`` runs another checkout's ``scripts/train.py`` the same
way, ``--rllib`` RLlib's PPO with 2 env runners (``scripts/peers/rllib_ppo_memory.py``).
Each run is a fresh process tree, ended afterwards: SIGTERM to the driver, then SIGKILL
to whatever of the tree outlives it. Every run's processes carry a tag in their
environment, so a process that left the tree (re-parented to init) is still found, named
in a warning, and killed at the end.
"""

from __future__ import annotations

import json
import os
import queue
import signal
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from dataclasses import asdict, dataclass
from typing import Any

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TAG = "RLFLEET_BENCH_MEMORY_RUN"  # environment variable that marks one run's processes
RUN_TIMEOUT_S = 600.0  # from start to the measured iteration
STOP_TIMEOUT_S = 30.0  # for the driver's own shutdown, then again for its descendants
TOP = 8  # processes printed per run


@dataclass
class Side:
    """One program whose process tree is measured."""

    label: str
    cmd: list[str]
    cwd: str
    pythonpath: str | None = None
    needs_logdir: bool = False  # train.py: ``--logdir`` a fresh temporary folder is appended


@dataclass
class Proc:
    pid: int
    name: str
    pss_mib: float


def _read(path: str) -> bytes | None:
    try:
        with open(path, "rb") as f:
            return f.read()
    except OSError:  # gone, or not ours to read
        return None


def _stat_fields(pid: int) -> list[bytes] | None:
    """``/proc/<pid>/stat`` from field 3 on; the name in field 2 may hold spaces and ')'."""
    stat = _read(f"/proc/{pid}/stat")
    return stat.rsplit(b")", 1)[1].split() if stat else None


def start_time(pid: int) -> int | None:
    """Field 22 of ``/proc/<pid>/stat``: with the pid, names one process even if the pid is reused."""
    fields = _stat_fields(pid)
    return int(fields[19]) if fields else None


def process_tree(root: int) -> dict[int, int | None]:
    """``root`` and all its live descendants, pid -> start time."""
    children: dict[int, list[int]] = {}
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            fields = _stat_fields(int(entry))
            if fields:
                children.setdefault(int(fields[1]), []).append(int(entry))  # field 4: ppid
    tree, todo = {}, [root]
    while todo:
        pid = todo.pop()
        tree[pid] = start_time(pid)
        todo += children.get(pid, [])
    return tree


def tagged(run_id: str) -> set[int]:
    """Live processes whose environment carries this run's tag (inherited by all it starts)."""
    mark = f"{TAG}={run_id}".encode()
    return {int(e) for e in os.listdir("/proc") if e.isdigit() and mark in (_read(f"/proc/{e}/environ") or b"").split(b"\0")}


def pss_kib(pid: int) -> int | None:
    rollup = _read(f"/proc/{pid}/smaps_rollup")
    for line in (rollup or b"").splitlines():
        if line.startswith(b"Pss:"):
            return int(line.split()[1])
    return None


def short_name(pid: int, driver: int) -> str:
    """``driver``; a Ray worker's title without its current method (``ray::EnvRunner``); a
    Python script's or module's name (``dashboard``, ``log_monitor``, ``watchdog``); else comm."""
    if pid == driver:
        return "driver"
    argv = [a.decode(errors="replace") for a in (_read(f"/proc/{pid}/cmdline") or b"").split(b"\0") if a]
    comm = (_read(f"/proc/{pid}/comm") or b"?").decode(errors="replace").strip()
    if argv and argv[0].startswith("ray::"):  # Ray retitles workers "ray::<Class>.<method>"
        return argv[0].split()[0].split(".")[0]
    if argv and os.path.basename(argv[0]).startswith("python"):
        if "-m" in argv[:-1]:
            return argv[argv.index("-m") + 1].rsplit(".", 1)[-1]
        script = next((a for a in argv[1:] if a.endswith(".py")), None)
        if script:
            return os.path.basename(script)[:-3]
    return comm


def _pump(stream: Any, lines: queue.Queue) -> None:
    """Reads the driver's stdout to its end, so that a full pipe never blocks the driver."""
    for line in stream:
        lines.put(line)
    lines.put(None)


def measure(side: Side, iterations: int) -> list[Proc]:
    """One fresh run of ``side``: the PSS of each process of its tree after ``iterations``."""
    run_id = uuid.uuid4().hex
    env = {**os.environ, TAG: run_id}
    if side.pythonpath:
        env["PYTHONPATH"] = side.pythonpath
    with tempfile.TemporaryDirectory() as logdir, tempfile.TemporaryFile() as stderr:
        cmd = side.cmd + (["--logdir", logdir] if side.needs_logdir else [])
        driver = subprocess.Popen(cmd, cwd=side.cwd, env=env, stdout=subprocess.PIPE, stderr=stderr, text=True)
        lines: queue.Queue = queue.Queue()
        threading.Thread(target=_pump, args=(driver.stdout, lines), daemon=True).start()
        known: dict[int, int | None] = {}
        try:
            wait_for_iteration(lines, iterations, side.label)
            known = process_tree(driver.pid)
            procs = [Proc(pid, short_name(pid, driver.pid), kib / 1024) for pid in known
                     if (kib := pss_kib(pid)) is not None]
            strays = tagged(run_id) - set(known)
            if strays:
                print(f"  warning: {side.label}: {len(strays)} process(es) of the run outside the driver's tree, "
                      f"not counted: {sorted(strays)}", flush=True)
        except Exception:
            stderr.seek(0)
            print(stderr.read().decode(errors="replace")[-2000:], file=sys.stderr)
            raise
        finally:
            stop(driver, known, run_id, side.label)
    return sorted(procs, key=lambda p: -p.pss_mib)


def wait_for_iteration(lines: queue.Queue, iterations: int, label: str) -> None:
    """Until the console line ``iter <iterations> | ...``; both train.py and the RLlib peer print one."""
    deadline = time.monotonic() + RUN_TIMEOUT_S
    while True:
        try:
            line = lines.get(timeout=max(0.0, deadline - time.monotonic()))
        except queue.Empty:
            raise RuntimeError(f"{label}: no iteration {iterations} after {RUN_TIMEOUT_S:.0f} s") from None
        if line is None:
            raise RuntimeError(f"{label}: the driver exited before iteration {iterations}")
        words = line.split()
        if len(words) > 1 and words[0] == "iter" and words[1].isdigit() and int(words[1]) >= iterations:
            return


def stop(driver: subprocess.Popen, known: dict[int, int | None], run_id: str, label: str) -> None:
    """SIGTERM the driver and let it shut its runtime down; then SIGKILL every process of its
    tree (as measured, or as it is now) and every tagged process that is still alive."""
    known = {**known, **process_tree(driver.pid)}
    driver.terminate()
    try:
        driver.wait(timeout=STOP_TIMEOUT_S)
    except subprocess.TimeoutExpired:
        driver.kill()
        driver.wait()
    deadline = time.monotonic() + STOP_TIMEOUT_S
    alive = [pid for pid, started in known.items() if started is not None and start_time(pid) == started]
    while alive and time.monotonic() < deadline:
        time.sleep(0.5)
        alive = [pid for pid in alive if start_time(pid) == known[pid]]
    left = set(alive) | tagged(run_id)
    for pid in left:
        try:
            os.kill(pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
    if left:
        print(f"  {label}: SIGKILLed {len(left)} process(es) left after the driver's exit", flush=True)
    time.sleep(0.5)
    if tagged(run_id):
        raise RuntimeError(f"{label}: processes of the run survive SIGKILL: {sorted(tagged(run_id))}")


def summary(procs: list[Proc]) -> str:
    total = sum(p.pss_mib for p in procs)
    top = ", ".join(f"{p.name} {p.pss_mib:.0f}" for p in procs[:TOP])
    rest = f", {len(procs) - TOP} more {sum(p.pss_mib for p in procs[TOP:]):.0f}" if len(procs) > TOP else ""
    return f"{total:7.0f} MiB PSS over {len(procs):2d} processes: {top}{rest}"


def main(args: Any) -> None:
    train = ["scripts/train.py", "--algo", "ppo", "--env", "CartPole-v1", "--num-env-runners", "2",
             "--stop-timesteps", "10000000"]
    sides = [Side("rlfleet", [sys.executable, *train], ROOT, needs_logdir=True)]
    if args.reference_checkout:
        sides.append(Side("reference", [sys.executable, *train], os.path.abspath(args.reference_checkout),
                          pythonpath=args.reference_pythonpath, needs_logdir=True))
    if args.rllib:
        sides.append(Side("rllib", [sys.executable, "scripts/peers/rllib_ppo_memory.py",
                                    "--iterations", str(args.iterations)], ROOT))
    runs: dict[str, list[list[Proc]]] = {side.label: [] for side in sides}
    for rep in range(args.repeats):
        for side in sides[rep % len(sides):] + sides[:rep % len(sides)]:  # who goes first rotates
            procs = measure(side, args.iterations)
            runs[side.label].append(procs)
            print(f"repeat {rep} {side.label:9s} {summary(procs)}", flush=True)

    totals = {label: [sum(p.pss_mib for p in procs) for procs in rs] for label, rs in runs.items()}
    medians = {label: statistics.median(ts) for label, ts in totals.items()}
    print(f"PPO on CartPole-v1, 2 Ray env runners, whole process tree after iteration {args.iterations}, "
          f"medians of {args.repeats}:")
    for label, ts in totals.items():
        counts = sorted({len(procs) for procs in runs[label]})
        print(f"  {label:9s} {medians[label]:7.0f} MiB PSS [{min(ts):.0f}, {max(ts):.0f}], "
              f"{'/'.join(map(str, counts))} processes")
    ratios = {label: medians["rlfleet"] / medians[label] for label in medians if label != "rlfleet"}
    for label, ratio in ratios.items():
        goal = " (issue 18's goal: <= 0.5x)" if label == "rllib" else ""
        print(f"  rlfleet / {label}: {ratio:.2f}x{goal}")
    if args.out:
        with open(args.out, "w") as f:
            json.dump({"iterations": args.iterations, "repeats": args.repeats, "median_mib": medians,
                       "ratio_of_rlfleet_to": ratios, "total_mib": totals,
                       "runs": {label: [[asdict(p) for p in procs] for procs in rs] for label, rs in runs.items()}},
                      f, indent=1)
        print(f"wrote {args.out}")

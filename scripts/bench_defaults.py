"""The library's defaults against Stable-Baselines3's (``python scripts/bench.py defaults``).

For tasks without a tuned example (and CartPole, trained here on the defaults, not its
example), each seed trains rlfleet PPO (``train.py --defaults``) and SB3's PPO with its
own defaults (``scripts/peers/sb3_ppo_defaults.py`` in the SB3 venv) for the same env-step
budget, each a fresh process. Reported per task: the return at the budget (the mean of
the last ``--window`` training episodes, both sides counted alike), median and range over
seeds, and the whole-process wall seconds with their ratio.

``--pin`` runs the two libraries of a seed at the same time, each pinned to its own core
(``taskset``) with one torch thread: half the wall time on a 2-core machine, and neither
gets the other's core. Without it they run one after the other, order alternating.
"""

from __future__ import annotations

import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from typing import Any

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TASKS = {  # env id -> env-step budget
    "HalfCheetah-v5": 300_000,
    "Walker2d-v5": 300_000,
    "Hopper-v5": 300_000,
    "CartPole-v1": 100_000,
    "Acrobot-v1": 100_000,
}


def _ours(env: str, seed: int, steps: int, window: int, core: int | None) -> tuple[list[str], str]:
    logdir = tempfile.mkdtemp(prefix="bench-defaults-")
    cmd = [sys.executable, os.path.join(ROOT, "scripts", "train.py"), "--algo", "ppo", "--env", env, "--defaults",
           "--seed", str(seed), "--stop-timesteps", str(steps), "--logdir", os.path.join(logdir, "run"), "--quiet",
           "--set", f"metrics_smoothing_episodes={window}"]
    return _pinned(cmd, core), logdir


def _sb3(python: str, env: str, seed: int, steps: int, window: int, core: int | None) -> list[str]:
    cmd = [python, os.path.join(ROOT, "scripts", "peers", "sb3_ppo_defaults.py"), "--env", env, "--seed", str(seed),
           "--steps", str(steps), "--window", str(window)]
    return _pinned(cmd, core)


def _pinned(cmd: list[str], core: int | None) -> list[str]:
    return cmd if core is None else ["taskset", "-c", str(core), *cmd]


def _start(cmd: list[str], threads: int | None) -> tuple[subprocess.Popen, float]:
    env = dict(os.environ)
    if threads is not None:
        env.update(OMP_NUM_THREADS=str(threads), MKL_NUM_THREADS=str(threads))
    return subprocess.Popen(cmd, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env), \
        time.perf_counter()


def _finish(proc: subprocess.Popen, t0: float, who: str) -> tuple[str, float]:
    out, err = proc.communicate()
    wall = time.perf_counter() - t0
    if proc.returncode not in (0, 1):
        sys.exit(f"{who} failed (exit {proc.returncode}): {err.strip().splitlines()[-1:]}")
    return out, wall


def _our_result(logdir: str, wall: float) -> dict[str, Any]:
    with open(os.path.join(logdir, "run", "progress.jsonl"), encoding="utf-8") as f:
        last = [json.loads(line) for line in f][-1]
    return {"return": last["episode_return_mean"], "env_steps": last["env_steps"], "wall_s": wall}


def run_seed(args: Any, env: str, steps: int, seed: int) -> dict[str, dict[str, Any]]:
    ours_cmd, logdir = _ours(env, seed, steps, args.window, 0 if args.pin else None)
    sb3_cmd = _sb3(args.sb3_python, env, seed, steps, args.window, 1 if args.pin else None)
    threads = 1 if args.pin else None
    results: dict[str, dict[str, Any]] = {}
    if args.pin:  # both at once, a core each
        procs = {"rlfleet": _start(ours_cmd, threads), "sb3": _start(sb3_cmd, threads)}
        outs = {who: _finish(p, t0, f"{who} {env} seed {seed}") for who, (p, t0) in procs.items()}
    else:
        order = ("rlfleet", "sb3") if seed % 2 == 0 else ("sb3", "rlfleet")
        cmds = {"rlfleet": ours_cmd, "sb3": sb3_cmd}
        outs = {who: _finish(*_start(cmds[who], threads), f"{who} {env} seed {seed}") for who in order}
    results["rlfleet"] = _our_result(logdir, outs["rlfleet"][1])
    shutil.rmtree(logdir, ignore_errors=True)
    sb3 = json.loads(outs["sb3"][0].strip().splitlines()[-1])
    results["sb3"] = {"return": sb3["final_return"], "env_steps": sb3["env_steps"], "wall_s": outs["sb3"][1]}
    return results


def main(args: Any) -> None:
    if not args.sb3_python:
        sys.exit("bench defaults needs --sb3-python (a venv with stable-baselines3; see scripts/peers/README.md)")
    tasks = {t: TASKS[t] for t in args.tasks} if args.tasks else TASKS
    if args.steps:
        tasks = {t: args.steps for t in tasks}
    table = []
    for env, steps in tasks.items():
        runs: dict[str, list[dict[str, Any]]] = {"rlfleet": [], "sb3": []}
        for seed in range(args.seeds):
            for who, r in run_seed(args, env, steps, seed).items():
                runs[who].append(r)
                print(f"{env} seed {seed} {who:7s}: return {r['return']:9.1f} at {r['env_steps']} env steps, "
                      f"{r['wall_s']:6.1f} s", flush=True)
        med = {who: {k: statistics.median(r[k] for r in rs) for k in ("return", "wall_s")} for who, rs in runs.items()}
        span = {who: (min(r["return"] for r in rs), max(r["return"] for r in rs)) for who, rs in runs.items()}
        table.append((env, steps, med, span))
    print(f"\nPPO defaults, median of {args.seeds} seeds, return = mean of the last {args.window} training episodes, "
          f"{'pinned a core each, run side by side' if args.pin else 'one process at a time'}, {os.cpu_count()} CPUs")
    print(f"{'task':16s} {'budget':>8s} {'rlfleet return [range]':>28s} {'SB3 return [range]':>28s} "
          f"{'rlfleet s':>10s} {'SB3 s':>8s} {'wall ratio':>10s}")
    for env, steps, med, span in table:
        cells = [f"{med[w]['return']:.1f} [{span[w][0]:.1f}, {span[w][1]:.1f}]" for w in ("rlfleet", "sb3")]
        print(f"{env:16s} {steps:8d} {cells[0]:>28s} {cells[1]:>28s} {med['rlfleet']['wall_s']:10.1f} "
              f"{med['sb3']['wall_s']:8.1f} {med['rlfleet']['wall_s'] / med['sb3']['wall_s']:10.2f}")
    if args.out:
        with open(args.out, "w", encoding="utf-8") as f:
            json.dump([{"task": e, "budget": s, "median": m, "range": r} for e, s, m, r in table], f, indent=1)

"""rlfleet's SAC against Stable-Baselines3's, both on their defaults (``python scripts/bench.py sac``).

Per task and seed, two fresh processes run at the same time, each pinned to its own core
(``taskset``) with one torch thread (OMP_NUM_THREADS=1; train.py's ``torch_threads`` is 1
too), so neither gets the other's core and a pair costs one run's wall time on 2 cores:

- core 0, rlfleet: ``scripts/train.py --algo sac --env ENV --defaults --seed S
  --stop-timesteps N --eval --quiet --logdir TMP`` with this script's python (run it with a
  venv that has the envs' extras: MuJoCo, Box2D);
- core 1, SB3: ``scripts/peers/sb3_sac.py --env ENV --seed S --steps N`` in the SB3 venv.

Per run: the greedy (deterministic) policy's mean return over 10 evaluation episodes after
training, the mean return of the last 100 training episodes (train.py's default
``metrics_smoothing_episodes``; SB3's peer is given the same window), the whole-process
wall seconds (from start to exit, as this script sees them: interpreter start, imports,
training and evaluation), the seconds in the training loop alone (rlfleet: the last
progress row's ``time_s``; SB3: the time in ``model.learn``) and the gradient steps taken
(rlfleet: ``learner/num_grad_steps`` summed over the progress rows; SB3: ``_n_updates``).
Seconds per gradient step are training seconds over gradient steps: env stepping and
acting are inside them, so they are an upper bound on one gradient step's cost.

Runs are appended, one JSON line each, to ``scripts/results/sac.jsonl`` (``--results``); a
later line for the same task, budget, library and seed replaces an earlier one, and
``--table`` rebuilds the table (medians over seeds) from that file alone.
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
import re
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from typing import Any

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
RESULTS = os.path.join(ROOT, "scripts", "results", "sac.jsonl")
CORES = {"rlfleet": 0, "sb3": 1}
FINAL_WINDOW = 100  # train.py's default metrics_smoothing_episodes, given to SB3's peer too
EVALUATION_LINE = re.compile(r"^evaluation: return (\S+) over (\d+) episodes$", re.MULTILINE)


@dataclasses.dataclass(frozen=True)
class Task:
    env: str
    budget: int
    """Env steps per run (``--stop-timesteps`` / ``--steps``)."""


def parse_task(spec: str) -> Task:
    """``ENV:STEPS`` (``Pendulum-v1:20000``); the env id may itself hold colons
    (``module:Env-v0``), the budget is what follows the last one."""
    env, sep, steps = spec.rpartition(":")
    if not sep or not env or not steps.isdigit() or int(steps) <= 0:
        raise ValueError(f"a task is ENV:STEPS with STEPS a positive integer (Pendulum-v1:20000), got {spec!r}")
    return Task(env, int(steps))


def parse_evaluation(stdout: str) -> float:
    """The return in train.py's ``evaluation: return X over K episodes`` line (the last one)."""
    found = EVALUATION_LINE.findall(stdout)
    if not found:
        raise ValueError("train.py printed no 'evaluation: return X over K episodes' line")
    return float(found[-1][0])


def progress_summary(rows: list[dict[str, Any]]) -> dict[str, Any]:
    """Env steps, training seconds, gradient steps and the final training return of a
    run's progress rows. ``learner/num_grad_steps`` is per iteration and absent (or null)
    while the buffer fills, so it is summed; ``time_s`` counts from the training loop's
    start, so the last row's is the whole loop."""
    if not rows:
        raise ValueError("the run wrote no progress rows")
    last = rows[-1]
    return {"env_steps": int(last["env_steps"]), "train_s": float(last["time_s"]),
            "grad_steps": int(sum(r.get("learner/num_grad_steps") or 0 for r in rows)),
            "final_return": last.get("episode_return_mean")}


def read_progress(logdir: str) -> list[dict[str, Any]]:
    with open(os.path.join(logdir, "progress.jsonl"), encoding="utf-8") as f:
        return [json.loads(line) for line in f if line.strip()]


def sb3_summary(stdout: str) -> dict[str, Any]:
    """The peer's one JSON line (the last line of its stdout)."""
    line = json.loads(stdout.strip().splitlines()[-1])
    return {"env_steps": int(line["env_steps"]), "train_s": float(line["train_s"]),
            "grad_steps": int(line["grad_steps"]), "final_return": line["final_return"],
            "eval_return": float(line["eval_return"])}


def _ours_cmd(task: Task, seed: int, logdir: str) -> list[str]:
    return [sys.executable, os.path.join(ROOT, "scripts", "train.py"), "--algo", "sac", "--env", task.env, "--defaults",
            "--seed", str(seed), "--stop-timesteps", str(task.budget), "--eval", "--quiet", "--logdir", logdir]


def _sb3_cmd(python: str, task: Task, seed: int) -> list[str]:
    return [python, os.path.join(ROOT, "scripts", "peers", "sb3_sac.py"), "--env", task.env, "--seed", str(seed),
            "--steps", str(task.budget), "--window", str(FINAL_WINDOW)]


def _start(cmd: list[str], core: int) -> tuple[subprocess.Popen, float]:
    env = {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}
    proc = subprocess.Popen(["taskset", "-c", str(core), *cmd], cwd=ROOT, env=env, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)
    return proc, time.perf_counter()


def run_pair(args: Any, task: Task, seed: int, commit: str) -> list[str]:
    """Runs the selected libraries of one (task, seed) side by side, a core each; appends
    a row per finished run and returns what failed (one line each)."""
    libraries = [lib for lib in ("rlfleet", "sb3") if args.only in (None, lib)]
    logdir = tempfile.mkdtemp(prefix="bench-sac-")
    started = {}
    for library in libraries:
        cmd = (_ours_cmd(task, seed, os.path.join(logdir, "run")) if library == "rlfleet"
               else _sb3_cmd(args.sb3_python, task, seed))
        started[library] = _start(cmd, CORES[library])
    failures = []
    try:
        for library, (proc, t0) in started.items():
            out, err = proc.communicate()
            wall = time.perf_counter() - t0
            if proc.returncode != 0:
                tail = " | ".join(err.strip().splitlines()[-3:])
                failures.append(f"{library} {task.env} seed {seed} failed (exit {proc.returncode}): {tail}")
                continue
            if library == "rlfleet":
                result = {**progress_summary(read_progress(os.path.join(logdir, "run"))),
                          "eval_return": parse_evaluation(out)}
            else:
                result = sb3_summary(out)
            row = {"task": task.env, "budget": task.budget, "library": library, "seed": seed,
                   "eval_return": round(result["eval_return"], 3), "final_return": _round(result["final_return"]),
                   "final_window": FINAL_WINDOW, "wall_s": round(wall, 2), "train_s": round(result["train_s"], 2),
                   "grad_steps": result["grad_steps"], "env_steps": result["env_steps"], "core": CORES[library],
                   "commit": commit}
            append(args.results, row)
            print(f"{task.env} seed {seed} {library:7s}: eval {row['eval_return']:.1f}, wall {row['wall_s']:.1f} s "
                  f"(training {row['train_s']:.1f} s), {row['grad_steps']} grad steps, {row['env_steps']} env steps",
                  flush=True)
    finally:
        shutil.rmtree(logdir, ignore_errors=True)
    return failures


def _round(x: float | None) -> float | None:
    return None if x is None else round(float(x), 3)


def append(path: str, row: dict[str, Any]) -> None:
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    with open(path, "a", encoding="utf-8") as f:
        f.write(json.dumps(row) + "\n")


def load(path: str) -> dict[tuple[str, int, str, int], dict[str, Any]]:
    """The results file's rows, the last one per (task, budget, library, seed)."""
    rows: dict[tuple[str, int, str, int], dict[str, Any]] = {}
    if os.path.exists(path):
        with open(path, encoding="utf-8") as f:
            for line in f:
                if line.strip():
                    row = json.loads(line)
                    rows[(row["task"], row["budget"], row["library"], row["seed"])] = row
    return rows


def medians(runs: list[dict[str, Any]]) -> dict[str, float] | None:
    """Medians over seeds of the evaluation return, the wall seconds and the training
    seconds per gradient step (None for no runs)."""
    if not runs:
        return None
    per_step = [r["train_s"] / r["grad_steps"] for r in runs if r["grad_steps"] > 0]
    return {"eval_return": statistics.median(r["eval_return"] for r in runs),
            "wall_s": statistics.median(r["wall_s"] for r in runs),
            "s_per_grad_step": statistics.median(per_step) if per_step else math.nan,
            "grad_steps": statistics.median(r["grad_steps"] for r in runs),
            "n": len(runs)}


def table(rows: dict[tuple[str, int, str, int], dict[str, Any]]) -> str:
    """The markdown table of the results rows: a line per (task, budget), medians over seeds."""
    head = ("| task | env steps | seeds (ours / SB3) | eval return rlfleet | eval return SB3 | wall s rlfleet | "
            "wall s SB3 | wall rlfleet / SB3 | ms per grad step rlfleet | ms per grad step SB3 | "
            "grad steps rlfleet / SB3 |")
    lines = ["Medians over seeds. Eval return: the greedy policy's mean over 10 episodes after training. Wall: the "
             "whole process (start, imports, training, evaluation), each side pinned to its own core with one torch "
             "thread, both at once. Per grad step: training-loop seconds (env steps included) over gradient steps.",
             "", head, "|" + "---|" * (head.count("|") - 1)]
    for task, budget in sorted({(t, b) for t, b, _, _ in rows}):
        ours = medians([r for (t, b, lib, _), r in rows.items() if (t, b, lib) == (task, budget, "rlfleet")])
        sb3 = medians([r for (t, b, lib, _), r in rows.items() if (t, b, lib) == (task, budget, "sb3")])

        def col(m: dict[str, float] | None, key: str, fmt: str, scale: float = 1.0) -> str:
            return "-" if m is None or math.isnan(m[key]) else format(m[key] * scale, fmt)

        ratio = f"{ours['wall_s'] / sb3['wall_s']:.2f}" if ours and sb3 else "-"
        lines.append(
            f"| {task} | {budget} | {ours['n'] if ours else 0} / {sb3['n'] if sb3 else 0} | "
            f"{col(ours, 'eval_return', '.1f')} | {col(sb3, 'eval_return', '.1f')} | "
            f"{col(ours, 'wall_s', '.1f')} | {col(sb3, 'wall_s', '.1f')} | {ratio} | "
            f"{col(ours, 's_per_grad_step', '.2f', 1000)} | {col(sb3, 's_per_grad_step', '.2f', 1000)} | "
            f"{col(ours, 'grad_steps', '.0f')} / {col(sb3, 'grad_steps', '.0f')} |")
    return "\n".join(lines)


def _commit() -> str:
    """HEAD's short hash, with ``+dirty`` when tracked files differ from it (the code that ran
    is then not the commit's)."""
    try:
        head = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=ROOT, capture_output=True, text=True,
                              check=True).stdout.strip()
        dirty = subprocess.run(["git", "diff", "--quiet", "HEAD"], cwd=ROOT, capture_output=True).returncode != 0
    except (OSError, subprocess.CalledProcessError):
        return "unknown"
    return head + ("+dirty" if dirty else "")


def main(args: Any) -> None:
    args.results = args.results or RESULTS
    if args.table:
        print(table(load(args.results)))
        return
    try:
        tasks = [parse_task(spec) for spec in args.tasks]
    except ValueError as e:
        sys.exit(f"bench sac: {e}")
    if args.only in (None, "sb3") and not os.path.exists(args.sb3_python):
        sys.exit(f"bench sac: no SB3 python at {args.sb3_python} (a venv with stable-baselines3; see "
                 "scripts/peers/README.md), or run --only rlfleet")
    if shutil.which("taskset") is None:
        sys.exit("bench sac: pins each side to a core with taskset, which is not on PATH (util-linux)")
    commit = _commit()
    failures: list[str] = []
    for task in tasks:
        for seed in range(args.seeds):
            failures += run_pair(args, task, seed, commit)
    print()
    print(table(load(args.results)))
    if failures:
        sys.exit("bench sac: " + "\n".join(failures))

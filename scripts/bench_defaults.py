"""The library's defaults against Stable-Baselines3's (``python scripts/bench.py defaults``).

For tasks without a tuned example (and CartPole, trained here on the defaults, not its
example), each seed trains rlfleet (``train.py --defaults``: PPO, and IMPALA or DQN where
their action spaces allow) and SB3's PPO with its own defaults
(``scripts/peers/sb3_ppo_defaults.py`` in the SB3 venv) for the same env-step budget, each
a fresh process. Per run: the final return (the mean of the last ``--window`` training
episodes, both sides counted alike), the best such mean seen while training, and the
whole-process wall seconds.

Suites: ``mujoco`` (the first comparison: three MuJoCo tasks and two classic ones) and
``broad`` (16 tasks over five families, issue 31). A suite's tasks are split in two: the
defaults were chosen looking at the ``tune`` half only; the ``check`` half is the test of
whether they hold on tasks nobody tuned them on.

Results are appended, one JSON line per run, to the suite's results file
(``scripts/results/defaults_<suite>.jsonl``, committed), so the suite runs in parts
(``--tasks``, ``--only``, ``--missing``) and ``--table`` regenerates the table from the
file alone. A later line for the same task, library, algorithm and seed replaces an
earlier one (a rerun after the defaults changed). The random policy's mean return per
task (``--only random``) is one line too; it anchors the collapse rule:

    collapse: final < best - 0.2 x (best - random)

``--pin`` runs the two libraries of a seed at the same time, each pinned to its own core
(``taskset``) with one torch thread: half the wall time on a 2-core machine, and neither
gets the other's core. ``--only X --core N`` runs one side pinned to core N.
"""

from __future__ import annotations

import dataclasses
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
RESULTS = os.path.join(ROOT, "scripts", "results")
MINATAR = "minatar.gym:register_envs"  # MinAtar's gymnasium ids exist once this has run
# SB3's defaults cannot run MiniGrid: MultiInputPolicy refuses the mission text, and without
# it the 7x7 view goes to the Nature CNN, whose 8x8 kernel does not fit. No published PPO
# figure at 300k env steps was found to cite; a success scores 1 - 0.9 x steps / max_steps,
# so the best possible mean is about 0.96 (Empty-8x8) and 0.97 (DoorKey-5x5).
MINIGRID_REFERENCE = "SB3's defaults cannot run it; no published figure at this budget; best possible ~0.96"


@dataclasses.dataclass(frozen=True)
class Task:
    budget: int
    """Env steps per run."""
    split: str = "tune"
    """``tune``: looked at while choosing the defaults; ``check``: held out to judge them."""
    imports: tuple[str, ...] = ()
    """``--import`` specs both sides need for the env id to exist."""
    discrete: bool = True
    """Discrete actions: DQN runs on it too (IMPALA runs on both kinds)."""
    sb3: bool = True
    """False where SB3's defaults cannot run the task; the table then cites ``reference``."""
    reference: str = ""
    """The published result compared against where SB3 cannot run."""


SUITES: dict[str, dict[str, Task]] = {
    "mujoco": {
        "HalfCheetah-v5": Task(300_000, discrete=False),
        "Walker2d-v5": Task(300_000, discrete=False),
        "Hopper-v5": Task(300_000, discrete=False),
        "CartPole-v1": Task(100_000),
        "Acrobot-v1": Task(100_000),
    },
    "broad": {
        # classic control
        "CartPole-v1": Task(100_000, "tune"),
        "Acrobot-v1": Task(100_000, "tune"),
        "MountainCar-v0": Task(300_000, "check"),
        "Pendulum-v1": Task(200_000, "check", discrete=False),
        # Box2D (pip install box2d)
        "LunarLander-v3": Task(300_000, "tune"),
        "LunarLanderContinuous-v3": Task(300_000, "check", discrete=False),
        "BipedalWalker-v3": Task(1_000_000, "check", discrete=False),
        # MuJoCo: the continuous defaults were chosen on the first three before this suite existed
        "HalfCheetah-v5": Task(300_000, "tune", discrete=False),
        "Hopper-v5": Task(300_000, "tune", discrete=False),
        "Walker2d-v5": Task(300_000, "tune", discrete=False),
        "Ant-v5": Task(300_000, "check", discrete=False),
        "Swimmer-v5": Task(300_000, "check", discrete=False),
        # MinAtar (pip install minatar): 10x10 bool frames
        "MinAtar/Breakout-v1": Task(1_000_000, "tune", (MINATAR,)),
        "MinAtar/SpaceInvaders-v1": Task(1_000_000, "check", (MINATAR,)),
        # MiniGrid (pip install minigrid): a 7x7 view, its mission text dropped by the env creator
        "MiniGrid-Empty-8x8-v0": Task(300_000, "tune", ("minigrid",), sb3=False, reference=MINIGRID_REFERENCE),
        "MiniGrid-DoorKey-5x5-v0": Task(300_000, "check", ("minigrid",), sb3=False, reference=MINIGRID_REFERENCE),
    },
}
ALGOS = ("ppo", "impala", "dqn")


def results_path(suite: str) -> str:
    return os.path.join(RESULTS, f"defaults_{suite}.jsonl")


def _commit() -> str:
    try:
        return subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=ROOT, capture_output=True, text=True,
                              check=True).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return "unknown"


def _pinned(cmd: list[str], core: int | None) -> list[str]:
    return cmd if core is None else ["taskset", "-c", str(core), *cmd]


def _ours_cmd(algo: str, env: str, task: Task, seed: int, window: int, logdir: str) -> list[str]:
    cmd = [sys.executable, os.path.join(ROOT, "scripts", "train.py"), "--algo", algo, "--env", env, "--defaults",
           "--seed", str(seed), "--stop-timesteps", str(task.budget), "--logdir", os.path.join(logdir, "run"),
           "--quiet", "--set", f"metrics_smoothing_episodes={window}"]
    for spec in task.imports:
        cmd += ["--import", spec]
    return cmd


def _sb3_cmd(python: str, env: str, task: Task, seed: int, window: int) -> list[str]:
    cmd = [python, os.path.join(ROOT, "scripts", "peers", "sb3_ppo_defaults.py"), "--env", env, "--seed", str(seed),
           "--steps", str(task.budget), "--window", str(window)]
    for spec in task.imports:
        cmd += ["--import", spec]
    return cmd


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
        rows = [json.loads(line) for line in f]
    last = rows[-1]
    return {"final": last["episode_return_mean"], "best": last.get("episode_return_best"),
            "env_steps": last["env_steps"], "wall_s": round(wall, 1)}


def _sb3_result(out: str, wall: float) -> dict[str, Any]:
    sb3 = json.loads(out.strip().splitlines()[-1])
    return {"final": sb3["final_return"], "best": sb3.get("best_return"), "env_steps": sb3["env_steps"],
            "wall_s": round(wall, 1)}


def random_mean(env_id: str, imports: tuple[str, ...], *, episodes: int = 100, seed: int = 0) -> dict[str, Any]:
    """The uniformly random policy's mean return over ``episodes`` episodes (gymnasium only)."""
    import numpy as np

    from rlfleet.envs import import_user_module, make_env_creator

    for spec in imports:
        import_user_module(spec)
    env = make_env_creator(env_id)()
    env.action_space.seed(seed)
    returns = []
    for episode in range(episodes):
        env.reset(seed=seed + episode)
        total, done = 0.0, False
        while not done:
            _, reward, terminated, truncated, _ = env.step(env.action_space.sample())
            total += float(reward)
            done = terminated or truncated
        returns.append(total)
    env.close()
    return {"library": "random", "task": env_id, "mean": round(float(np.mean(returns)), 3), "episodes": episodes}


def append(path: str, row: dict[str, Any]) -> None:
    os.makedirs(os.path.dirname(path), exist_ok=True)
    with open(path, "a", encoding="utf-8") as f:
        f.write(json.dumps(row) + "\n")


def load(path: str) -> dict[tuple, dict[str, Any]]:
    """The results file's rows, the last one per (task, library, algo, seed)."""
    rows: dict[tuple, dict[str, Any]] = {}
    if os.path.exists(path):
        with open(path, encoding="utf-8") as f:
            for line in f:
                if line.strip():
                    row = json.loads(line)
                    rows[(row["task"], row["library"], row.get("algo"), row.get("seed"))] = row
    return rows


def collapsed(final: float, best: float | None, random: float | None) -> bool:
    """The run ended below ``best - 0.2 x (best - random)`` (issue 31's rule)."""
    if best is None or random is None:
        return False
    return final < best - 0.2 * (best - random)


def run_pair(args: Any, env: str, task: Task, seed: int, sides: list[tuple[str, str]], commit: str) -> None:
    """Runs the given (library, algo) sides of one seed, side by side when pinned."""
    threads = 1 if args.pin or args.core is not None else None
    started = []
    for i, (library, algo) in enumerate(sides):
        core = args.core if args.core is not None else (i % 2 if args.pin else None)
        if library == "sb3":
            cmd, logdir = _sb3_cmd(args.sb3_python, env, task, seed, args.window), None
        else:
            logdir = tempfile.mkdtemp(prefix="bench-defaults-")
            cmd = _ours_cmd(algo, env, task, seed, args.window, logdir)
        started.append((library, algo, logdir, *_start(_pinned(cmd, core), threads)))
        if not args.pin:  # one at a time
            library, algo, logdir, proc, t0 = started.pop()
            _record(args, env, seed, library, algo, logdir, proc, t0, commit)
    for library, algo, logdir, proc, t0 in started:
        _record(args, env, seed, library, algo, logdir, proc, t0, commit)


def _record(args: Any, env: str, seed: int, library: str, algo: str, logdir: str | None, proc: subprocess.Popen,
            t0: float, commit: str) -> None:
    out, wall = _finish(proc, t0, f"{library} {algo} {env} seed {seed}")
    result = _sb3_result(out, wall) if library == "sb3" else _our_result(logdir, wall)
    if logdir:
        shutil.rmtree(logdir, ignore_errors=True)
    row = {"task": env, "library": library, "algo": algo, "seed": seed, **result, "window": args.window,
           "pinned": bool(args.pin or args.core is not None), "commit": commit}
    append(args.results, row)
    best = "-" if result["best"] is None else f"{result['best']:.1f}"
    print(f"{env} seed {seed} {library} {algo}: final {result['final']:.1f}, best {best} at "
          f"{result['env_steps']} env steps, {result['wall_s']:.1f} s", flush=True)


def _num(x: float) -> str:
    """Returns to one decimal, small ones (MiniGrid's 0.96) to two."""
    return f"{x:.2f}" if abs(x) < 10 else f"{x:.1f}"


def table(suite: dict[str, Task], rows: dict[tuple, dict[str, Any]], window: int) -> str:
    """The suite's table from its results rows: medians over seeds."""
    def runs(env: str, library: str, algo: str) -> list[dict[str, Any]]:
        return [r for (t, lib, a, _), r in sorted(rows.items(), key=lambda kv: str(kv[0]))
                if t == env and lib == library and a == algo]

    def cell(rs: list[dict[str, Any]], random: float | None) -> str:
        if not rs:
            return "-"
        final = statistics.median(r["final"] for r in rs)
        bests = [r["best"] for r in rs if r["best"] is not None]
        best = statistics.median(bests) if bests else None
        flags = sum(collapsed(r["final"], r["best"], random) for r in rs)
        text = _num(final) + (f" / {_num(best)}" if best is not None else "")
        return text + (f" C{flags}" if flags else "") + (f" n{len(rs)}" if len(rs) > 1 else "")

    head = ("| task | split | budget | random | SB3 PPO final / best | rlfleet PPO final / best | PPO wall s "
            "(ours / SB3) | ours >= SB3 | IMPALA final / best | DQN final / best |")
    lines = [f"Final / best = mean of the last {window} training episodes at the budget / the best such mean "
             "while training; medians over seeds (nK = K seeds); CK = K runs collapsed "
             "(final < best - 0.2 (best - random)).", "", head, "|" + "---|" * (head.count("|") - 1)]
    wins = total = 0
    for env, task in suite.items():
        rand = rows.get((env, "random", None, None), {}).get("mean")
        sb3, ours = runs(env, "sb3", "ppo"), runs(env, "rlfleet", "ppo")
        verdict = "-"
        if ours and (sb3 or not task.sb3):
            ours_final = statistics.median(r["final"] for r in ours)
            ours_wall = statistics.median(r["wall_s"] for r in ours)
            if sb3:
                sb3_final = statistics.median(r["final"] for r in sb3)
                sb3_wall = statistics.median(r["wall_s"] for r in sb3)
                won = ours_final >= sb3_final and ours_wall < sb3_wall
                wins, total = wins + won, total + 1
                verdict = "yes" if won else "no"
                wall = f"{ours_wall:.0f} / {sb3_wall:.0f}"
            else:
                wall = f"{ours_wall:.0f} / -"
        else:
            wall = "-"
        sb3_cell = cell(sb3, rand) if task.sb3 else f"cannot run ({task.reference})"
        impala, dqn = runs(env, "rlfleet", "impala"), runs(env, "rlfleet", "dqn")
        lines.append(f"| {env} | {task.split} | {task.budget // 1000}k | "
                     f"{'-' if rand is None else _num(rand)} | {sb3_cell} | {cell(ours, rand)} | {wall} | {verdict} | "
                     f"{cell(impala, rand)} | {cell(dqn, rand) if task.discrete else 'n/a'} |")
    lines.append("")
    lines.append(f"PPO at or above SB3's final return in less wall time: {wins} of {total} tasks compared.")
    return "\n".join(lines)


def main(args: Any) -> None:
    suite = SUITES[args.suite]
    args.results = args.results or results_path(args.suite)
    if args.table:
        print(table(suite, load(args.results), args.window))
        return
    unknown = [t for t in (args.tasks or []) if t not in suite]
    if unknown:
        sys.exit(f"bench defaults: {unknown[0]!r} is not in suite {args.suite!r} (its tasks: {', '.join(suite)})")
    tasks = {t: suite[t] for t in args.tasks} if args.tasks else suite
    if args.only in (None, "sb3") and not args.sb3_python:
        sys.exit("bench defaults needs --sb3-python (a venv with stable-baselines3; see scripts/peers/README.md)")
    commit = _commit()
    done = load(args.results) if args.missing else {}
    for env, task in tasks.items():
        if args.only == "random":
            if (env, "random", None, None) not in done:
                append(args.results, {**random_mean(env, task.imports), "commit": commit})
                print(f"{env}: random {load(args.results)[(env, 'random', None, None)]['mean']:.1f}", flush=True)
            continue
        for seed in range(args.seeds):
            sides = []
            if args.only in (None, "rlfleet"):
                sides += [("rlfleet", a) for a in args.algos if a != "dqn" or task.discrete]
            if args.only in (None, "sb3") and task.sb3:
                sides.append(("sb3", "ppo"))
            sides = [s for s in sides if (env, *s, seed) not in done]
            for i in range(0, len(sides), 2 if args.pin else 1):
                run_pair(args, env, task, seed, sides[i:i + 2] if args.pin else sides[i:i + 1], commit)
    if len(tasks) > 1:
        print()
        print(table(suite, load(args.results), args.window))

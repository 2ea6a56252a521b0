"""Benchmarks (never asserted in tests: these machines are shared and noisy).

    python scripts/bench.py cartpole-race --seeds 3 --sb3-python /tmp/sb3venv/bin/python

``cartpole-race``: wall-clock seconds from process start to a mean return of 450 over the
last 20 episodes on CartPole-v1, rlfleet PPO (its tuned example) against Stable-Baselines3
PPO with rl-zoo's tuned hyperparameters (``scripts/peers/sb3_ppo_cartpole.py``, run in its
own venv). Each seed runs both as fresh processes, alternating which goes first; the
report gives medians and the ratio of medians.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def timed(cmd: list[str]) -> tuple[float, str]:
    t0 = time.perf_counter()
    out = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True)
    wall = time.perf_counter() - t0
    if out.returncode not in (0, 1):
        raise RuntimeError(f"{' '.join(cmd)} failed ({out.returncode}): {out.stderr.strip()[-500:]}")
    return wall, out.stdout


def run_ours(seed: int, target: float, window: int) -> dict:
    with tempfile.TemporaryDirectory() as logdir:
        wall, _ = timed([
            sys.executable, "scripts/train.py", "--algo", "ppo", "--env", "CartPole-v1", "--seed", str(seed),
            "--stop-reward", str(target), "--stop-timesteps", "200000", "--quiet", "--logdir", logdir,
            "--set", f"metrics_smoothing_episodes={window}",
        ])
        with open(os.path.join(logdir, "progress.jsonl")) as f:
            last = json.loads(f.readlines()[-1])
    ret = last["episode_return_mean"] or 0.0
    return {"wall_s": wall, "env_steps": last["env_steps"], "reached": ret >= target}


def run_sb3(python: str, seed: int, target: float, window: int) -> dict:
    wall, stdout = timed([
        python, "scripts/peers/sb3_ppo_cartpole.py", "--seed", str(seed), "--target", str(target),
        "--window", str(window), "--max-steps", "100000",
    ])
    line = json.loads(stdout.strip().splitlines()[-1])
    return {"wall_s": wall, "env_steps": line["env_steps"], "reached": line["reached"]}


def cartpole_race(args: argparse.Namespace) -> None:
    rows: dict[str, list[dict]] = {"rlfleet": [], "sb3": []}
    for seed in range(args.seeds):
        order = ["rlfleet", "sb3"] if seed % 2 == 0 else ["sb3", "rlfleet"]
        for who in order:
            if who == "sb3" and not args.sb3_python:
                continue
            r = run_ours(seed, args.target, args.window) if who == "rlfleet" else run_sb3(
                args.sb3_python, seed, args.target, args.window)
            rows[who].append(r)
            print(f"seed {seed} {who:8s} wall {r['wall_s']:6.2f} s  env_steps {r['env_steps']:7d}  "
                  f"reached {r['reached']}", flush=True)
    med = {}
    for who, rs in rows.items():
        if rs:
            med[who] = statistics.median(r["wall_s"] for r in rs)
            steps = statistics.median(r["env_steps"] for r in rs)
            print(f"{who:8s} median wall {med[who]:.2f} s, median env steps {steps:.0f}, "
                  f"reached {sum(r['reached'] for r in rs)}/{len(rs)}")
    if len(med) == 2:
        print(f"ratio rlfleet/sb3 (median wall): {med['rlfleet'] / med['sb3']:.2f}")


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = p.add_subparsers(dest="bench", required=True)
    race = sub.add_parser("cartpole-race", help="time to return 450 on CartPole-v1 vs SB3")
    race.add_argument("--seeds", type=int, default=3)
    race.add_argument("--target", type=float, default=450.0)
    race.add_argument("--window", type=int, default=20)
    race.add_argument("--sb3-python", help="python of a venv with stable-baselines3 (see scripts/peers)")
    args = p.parse_args()
    {"cartpole-race": cartpole_race}[args.bench](args)


if __name__ == "__main__":
    main()

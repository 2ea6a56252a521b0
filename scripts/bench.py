"""Benchmarks (never asserted in tests: these machines are shared and noisy).

    python scripts/bench.py cartpole-race --seeds 3 --sb3-python /tmp/sb3venv/bin/python
    python scripts/bench.py fleet-scaling --repeats 3
    python scripts/bench.py startup --repeats 3

``fleet-scaling``: env steps/s of PPO sampling a simulator that burns 2 ms of CPU per
step (``envs.testing.BusyEnv``), with 1 and with 2 Ray env runners; the update is kept
tiny so sampling dominates. ``startup``: seconds from process start to the first
finished iteration of ``scripts/train.py`` on CartPole-v1, local and with 2 Ray runners.

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


def fleet_scaling(args: argparse.Namespace) -> None:
    sys.path.insert(0, ROOT)
    from algorithms.ppo import PPOConfig
    from envs.testing import BusyEnv

    rates: dict[int, list[float]] = {1: [], 2: []}
    for rep in range(args.repeats):
        for runners in (1, 2):
            config = PPOConfig(
                env=BusyEnv, env_config={"step_cost_ms": 2.0}, seed=rep, num_env_runners=runners,
                num_envs_per_runner=4, rollout_fragment_length=50, num_epochs=1, minibatch_size=200 * runners,
            )
            algo = config.build()
            try:
                for _ in range(2):  # warm-up: actor start, first weights
                    algo.train()
                steps0, t0 = algo.env_steps, time.perf_counter()
                for _ in range(args.iterations):
                    algo.train()
                rate = (algo.env_steps - steps0) / (time.perf_counter() - t0)
            finally:
                algo.stop()
            rates[runners].append(rate)
            print(f"repeat {rep} runners {runners}: {rate:7.1f} env steps/s", flush=True)
    one, two = statistics.median(rates[1]), statistics.median(rates[2])
    print(f"median env steps/s: 1 runner {one:.1f}, 2 runners {two:.1f}, speed-up {two / one:.2f}x "
          f"(ideal 2.0x; one env step costs 2 ms, so 1 runner tops out near 500/s)")


def startup(args: argparse.Namespace) -> None:
    results: dict[str, list[float]] = {"local": [], "ray (2 runners)": []}
    for _ in range(args.repeats):
        for label, extra in (("local", []), ("ray (2 runners)", ["--num-env-runners", "2"])):
            with tempfile.TemporaryDirectory() as logdir:
                cmd = [sys.executable, "-u", "scripts/train.py", "--algo", "ppo", "--env", "CartPole-v1",
                       "--logdir", logdir, "--stop-timesteps", "100000", *extra]
                t0 = time.perf_counter()
                proc = subprocess.Popen(cmd, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
                for line in proc.stdout:  # the first per-iteration line marks the first finished iteration
                    if line.startswith("iter "):
                        results[label].append(time.perf_counter() - t0)
                        break
                proc.terminate()
                proc.wait()
    for label, times in results.items():
        print(f"{label:16s} process start -> first iteration: median {statistics.median(times):.2f} s "
              f"({', '.join(f'{t:.2f}' for t in times)})")


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = p.add_subparsers(dest="bench", required=True)
    race = sub.add_parser("cartpole-race", help="time to return 450 on CartPole-v1 vs SB3")
    race.add_argument("--seeds", type=int, default=3)
    race.add_argument("--target", type=float, default=450.0)
    race.add_argument("--window", type=int, default=20)
    race.add_argument("--sb3-python", help="python of a venv with stable-baselines3 (see scripts/peers)")
    scaling = sub.add_parser("fleet-scaling", help="env steps/s with 1 vs 2 Ray runners on a 2 ms/step env")
    scaling.add_argument("--repeats", type=int, default=3)
    scaling.add_argument("--iterations", type=int, default=8)
    start = sub.add_parser("startup", help="seconds from process start to the first iteration")
    start.add_argument("--repeats", type=int, default=3)
    args = p.parse_args()
    {"cartpole-race": cartpole_race, "fleet-scaling": fleet_scaling, "startup": startup}[args.bench](args)


if __name__ == "__main__":
    main()

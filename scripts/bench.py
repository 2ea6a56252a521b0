"""Benchmarks (never asserted in tests: these machines are shared and noisy).

    python scripts/bench.py cartpole-race --seeds 3 --sb3-python /tmp/sb3venv/bin/python
    python scripts/bench.py fleet-scaling --repeats 3
    python scripts/bench.py startup --repeats 3
    python scripts/bench.py impala-vs-ppo --repeats 3
    python scripts/bench.py lm-async --seeds 3
    python scripts/bench.py defaults --suite broad --pin --window 20 --sb3-python /tmp/sb3venv/bin/python
    python scripts/bench.py sampling --repeats 5
    python scripts/bench.py memory --repeats 3 --rllib
    python scripts/bench.py sac --seeds 3 --sb3-python /tmp/sb3venv/bin/python

``fleet-scaling``: env steps/s of PPO with a local runner, 1 and 2 Ray env runners, on a
simulator that burns 2 ms of CPU per step (``envs.testing.BusyEnv``) and on CartPole-v1,
with the median time of one weight broadcast; the update is kept tiny so sampling
dominates. ``startup``: seconds from process start to the first
finished iteration of ``scripts/train.py`` on CartPole-v1, local and with 2 Ray runners,
broken down by the ``startup/*`` keys of the first progress row (train.py's imports and
config, the algorithm's imports (torch), env probe, the wait for the rest of the runtime's
start, which began before those imports, learners, runner actors with their first weights,
the first iteration); ``--reference-checkout`` starts another checkout's the same way.

``impala-vs-ppo``: env steps/s of IMPALA (a request always in flight on every runner)
against synchronous PPO (runners idle while the learner updates), both on
``envs.testing.BusyEnv`` (2 ms of CPU per step) with the same 2 Ray runners x 4 envs x 50
steps and the same learner work per env step (one gradient step on 400 rows per 400 env
steps), with the share of the time the runners spent sampling.

``defaults``: rlfleet on its defaults (``train.py --defaults``; PPO, and IMPALA and DQN with
``--algos``) against SB3's PPO on SB3's own defaults, on tasks without a tuned example
(``--suite broad``: 16 tasks, classic control to MinAtar and MiniGrid): the final and best
return (means of the last ``--window`` training episodes), the random policy's, and the
whole-process wall, appended per run to a results file that ``--table`` turns into the
table (``scripts/bench_defaults.py``).

``sac``: rlfleet's SAC against SB3's SAC, both on their defaults and one env, each pinned
to its own core with one torch thread, on Pendulum-v1 (20k env steps) and HalfCheetah-v5
(100k): the greedy return over 10 episodes at the budget, the whole-process wall and the
training time per gradient step, medians over seeds (``scripts/bench_sac.py``,
``scripts/peers/sb3_sac.py``; results in ``scripts/results/sac.jsonl``).

``sampling``: env steps/s of one local ``EnvRunner`` (CartPole-v1, 8 envs, initial policy,
one torch thread) against the bare loop (gymnasium's ``SyncVectorEnv`` plus the actor and
critic forwards and the fragment's arrays), alternated in one process
(``scripts/bench_sampling.py``).

``memory``: PSS of the whole process tree (driver, Ray's processes, the runner actors) of
PPO on CartPole-v1 with 2 Ray env runners, after iteration ``--iterations`` (5) of a fresh
run: totals, process counts and the largest processes, medians over repeats, against
another checkout's ``scripts/train.py`` (``--reference-checkout``) and RLlib's PPO with 2
env runners (``--rllib``, ``scripts/peers/rllib_ppo_memory.py``) (``scripts/bench_memory.py``).

``cartpole-race``: wall-clock seconds from process start to a mean return of 450 over the
last 20 episodes on CartPole-v1, rlfleet PPO (or DQN with ``--algo dqn``; its tuned
example) against Stable-Baselines3's with rl-zoo's tuned hyperparameters
(``scripts/peers/sb3_*_cartpole.py``, run in its own venv; SB3 gets 100k env steps). Each seed runs both as fresh processes, alternating which goes first; the
report gives medians and the ratio of medians.
"""

from __future__ import annotations

import argparse
import importlib
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def timed(cmd: list[str], cwd: str = ROOT, pythonpath: str | None = None) -> tuple[float, str]:
    env = {**os.environ, **({"PYTHONPATH": pythonpath} if pythonpath else {})}
    t0 = time.perf_counter()
    out = subprocess.run(cmd, cwd=cwd, env=env, capture_output=True, text=True)
    wall = time.perf_counter() - t0
    if out.returncode not in (0, 1):
        raise RuntimeError(f"{' '.join(cmd)} failed ({out.returncode}): {out.stderr.strip()[-500:]}")
    return wall, out.stdout


PEERS = {"ppo": ("scripts/peers/sb3_ppo_cartpole.py", "100000"), "dqn": ("scripts/peers/sb3_dqn_cartpole.py", "100000")}


def run_ours(algo: str, seed: int, target: float, window: int, checkout: str = ROOT,
             pythonpath: str | None = None) -> dict:
    """``scripts/train.py`` of ``checkout`` (this one, or another commit's worktree, whose
    rlfleet package ``pythonpath`` makes importable: the installed one is this checkout's)."""
    with tempfile.TemporaryDirectory() as logdir:
        wall, _ = timed([
            sys.executable, "scripts/train.py", "--algo", algo, "--env", "CartPole-v1", "--seed", str(seed),
            "--stop-reward", str(target), "--stop-timesteps", "200000", "--quiet", "--logdir", logdir,
            "--set", f"metrics_smoothing_episodes={window}",
        ], cwd=checkout, pythonpath=pythonpath)
        with open(os.path.join(logdir, "progress.jsonl")) as f:
            last = json.loads(f.readlines()[-1])
    ret = last["episode_return_mean"] or 0.0
    return {"wall_s": wall, "env_steps": last["env_steps"], "reached": ret >= target}


def run_sb3(algo: str, python: str, seed: int, target: float, window: int) -> dict:
    script, max_steps = PEERS[algo]
    wall, stdout = timed([
        python, script, "--seed", str(seed), "--target", str(target), "--window", str(window), "--max-steps", max_steps,
    ])
    line = json.loads(stdout.strip().splitlines()[-1])
    # at_hit_s: from the script's first statement to the hit, without the interpreter's start
    return {"wall_s": wall, "env_steps": line["env_steps"], "reached": line["reached"],
            "at_hit_s": line["wall_s_in_process"]}


def cartpole_race(args: argparse.Namespace) -> None:
    rows: dict[str, list[dict]] = {"rlfleet": [], "sb3": [], "reference": []}
    for seed in range(args.seeds):
        order = ["rlfleet", "sb3", "reference"] if seed % 2 == 0 else ["reference", "sb3", "rlfleet"]
        for who in order:
            if (who == "sb3" and not args.sb3_python) or (who == "reference" and not args.reference_checkout):
                continue
            if who == "sb3":
                r = run_sb3(args.algo, args.sb3_python, seed, args.target, args.window)
            else:
                r = (run_ours(args.algo, seed, args.target, args.window, args.reference_checkout,
                              args.reference_pythonpath) if who == "reference"
                     else run_ours(args.algo, seed, args.target, args.window))
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
    for other in ("sb3", "reference"):
        if other in med and "rlfleet" in med:
            print(f"ratio rlfleet/{other} (median wall): {med['rlfleet'] / med[other]:.2f}")
    if rows["sb3"] and rows["rlfleet"]:  # the stricter basis: SB3 timed only up to its hit
        at_hit = statistics.median(r["at_hit_s"] for r in rows["sb3"])
        print(f"ratio rlfleet/sb3 (our median wall / SB3's median time at the hit, {at_hit:.2f} s): "
              f"{med['rlfleet'] / at_hit:.2f}")


FLEETS = {"local": 0, "1 Ray runner": 1, "2 Ray runners": 2}  # label -> num_env_runners


def fleet_scaling(args: argparse.Namespace) -> None:
    from rlfleet.algorithms.ppo import PPOConfig
    from rlfleet.envs.testing import BusyEnv

    envs = {"BusyEnv 2 ms/step": (BusyEnv, {"step_cost_ms": 2.0}, 50), "CartPole-v1": ("CartPole-v1", {}, 256)}
    for env_label, (env, env_config, fragment) in envs.items():
        rates: dict[str, list[float]] = {label: [] for label in FLEETS}
        syncs: dict[str, list[float]] = {label: [] for label in FLEETS}
        for rep in range(args.repeats):
            for label, runners in FLEETS.items():
                config = PPOConfig(
                    env=env, env_config=env_config, seed=rep, num_env_runners=runners, num_envs_per_runner=4,
                    rollout_fragment_length=fragment, num_epochs=1, minibatch_size=4 * fragment * max(1, runners),
                )
                algo = config.build()
                try:
                    for _ in range(2):  # warm-up: actor start, first weights
                        algo.train()
                    steps0, t0 = algo.env_steps, time.perf_counter()
                    results = [algo.train() for _ in range(args.iterations)]
                    rate = (algo.env_steps - steps0) / (time.perf_counter() - t0)
                finally:
                    algo.stop()
                rates[label].append(rate)
                syncs[label].append(statistics.median(r["weight_sync_s"] for r in results))
                print(f"{env_label} repeat {rep} {label}: {rate:8.1f} env steps/s, weight broadcast "
                      f"{1000 * syncs[label][-1]:.2f} ms", flush=True)
        local = statistics.median(rates["local"])
        print(f"{env_label}, medians of {args.repeats} (4 envs per runner, {fragment}-step fragments, one "
              "1-epoch update per iteration):")
        for label in FLEETS:
            rate = statistics.median(rates[label])
            print(f"    {label:14s} {rate:8.1f} env steps/s ({rate / local:.2f}x local), weight broadcast "
                  f"{1000 * statistics.median(syncs[label]):.2f} ms")


def startup(args: argparse.Namespace) -> None:
    ray2 = ["--num-env-runners", "2"]
    cases = [("local", [], ROOT, None), ("ray (2 runners)", ray2, ROOT, None)]
    if args.reference_checkout:  # the same command on another checkout, alternated with ours
        cases.append(("reference, ray", ray2, os.path.abspath(args.reference_checkout), args.reference_pythonpath))
    results: dict[str, list[float]] = {label: [] for label, *_ in cases}
    phases: dict[str, list[dict[str, float]]] = {label: [] for label in results}
    for _ in range(args.repeats):
        for label, extra, cwd, pythonpath in cases:
            env = {**os.environ, **({"PYTHONPATH": pythonpath} if pythonpath else {})}
            with tempfile.TemporaryDirectory() as logdir:
                cmd = [sys.executable, "-u", "scripts/train.py", "--algo", "ppo", "--env", "CartPole-v1",
                       "--logdir", logdir, "--stop-timesteps", "100000", *extra]
                t0 = time.perf_counter()
                proc = subprocess.Popen(cmd, cwd=cwd, env=env, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL,
                                        text=True)
                for line in proc.stdout:  # the first per-iteration line marks the first finished iteration
                    if line.startswith("iter "):
                        results[label].append(time.perf_counter() - t0)
                        break
                progress, deadline = os.path.join(logdir, "progress.jsonl"), time.monotonic() + 10
                while time.monotonic() < deadline:  # its progress row may still be on its way to the file
                    if os.path.exists(progress) and open(progress, encoding="utf-8").read().endswith("\n"):
                        break
                    time.sleep(0.05)
                proc.terminate()
                proc.wait()
                with open(progress, encoding="utf-8") as f:
                    first = json.loads(f.readline())
                phases[label].append({k[len("startup/"):-2]: v for k, v in first.items() if k.startswith("startup/")})
            time.sleep(2)  # the last run's Ray processes gone before the next starts
    for label, times in results.items():
        ratio = (f"; {statistics.median(times) / statistics.median(results['reference, ray']):.2f}x the reference"
                 if label == "ray (2 runners)" and "reference, ray" in results else "")
        print(f"{label:16s} process start -> first iteration: median {statistics.median(times):.2f} s "
              f"({', '.join(f'{t:.2f}' for t in times)}){ratio}")
        names = list(phases[label][0])
        print("    " + ", ".join(f"{n} {statistics.median(p[n] for p in phases[label]):.2f} s" for n in names)
              + " (medians; the rest is the interpreter's own start)")


IMPALA_VS_PPO_FLEET = dict(num_env_runners=2, num_envs_per_runner=4, rollout_fragment_length=50)


def measure_window(algo, warmup_steps: int, steps: int) -> dict:
    """Env steps/s and runner busy fraction over a window of at least ``steps`` env steps,
    after ``warmup_steps`` (actor start, first weights). The busy fraction comes from the
    algorithm's ``runner_busy_s`` counter (sum of the arrived fragments' sample time) over
    elapsed wall x runners: the per-iteration result key is noisy for IMPALA, whose
    iterations hold one or two fragments. At both ends of the window each runner has one
    fragment in flight, so what the window misses at its start it roughly gains at its end."""
    while algo.env_steps < warmup_steps:
        algo.train()
    steps0, busy0, t0 = algo.env_steps, algo.runner_busy_s, time.perf_counter()
    lags = []
    while algo.env_steps - steps0 < steps:
        lags.append(algo.train()["policy_lag_mean"])
    elapsed = time.perf_counter() - t0
    runners = algo.env_runner_group.size
    return {
        "rate": (algo.env_steps - steps0) / elapsed,
        "busy": (algo.runner_busy_s - busy0) / (elapsed * runners),
        "lag": statistics.mean(lags),
        "iterations": len(lags),
    }


def impala_vs_ppo(args: argparse.Namespace) -> None:
    from rlfleet.algorithms.impala import IMPALAConfig
    from rlfleet.algorithms.ppo import PPOConfig
    from rlfleet.envs.testing import BusyEnv

    common = dict(env=BusyEnv, env_config={"step_cost_ms": 2.0}, **IMPALA_VS_PPO_FLEET)
    batch = IMPALA_VS_PPO_FLEET["num_env_runners"] * IMPALA_VS_PPO_FLEET["num_envs_per_runner"] * \
        IMPALA_VS_PPO_FLEET["rollout_fragment_length"]  # 400 env steps: one PPO iteration
    # The same learner work per env step: one gradient step on 400 rows per 400 env steps
    # (PPO: one epoch, one minibatch of its 400-row batch; IMPALA: two 200-row fragments).
    builders = {
        "ppo": lambda seed: PPOConfig(**common, seed=seed, num_epochs=1, minibatch_size=batch),
        "impala": lambda seed: IMPALAConfig(**common, seed=seed, num_epochs=1, train_batch_fragments=2),
    }
    runs: dict[str, list[dict]] = {name: [] for name in builders}
    for rep in range(args.repeats):
        order = list(builders) if rep % 2 == 0 else list(reversed(builders))
        for name in order:
            algo = builders[name](rep).build()
            try:
                r = measure_window(algo, warmup_steps=2 * batch, steps=args.steps)
            finally:
                algo.stop()
            runs[name].append(r)
            print(f"repeat {rep} {name:6s}: {r['rate']:7.1f} env steps/s, runner busy {r['busy']:.2f}, "
                  f"policy lag {r['lag']:.2f} ({r['iterations']} iterations)", flush=True)
    med = {name: {k: statistics.median(r[k] for r in rs) for k in ("rate", "busy", "lag")} for name, rs in runs.items()}
    print(f"\nBusyEnv 2 ms/step, 2 Ray runners x 4 envs x 50 steps, {os.cpu_count()} CPUs, "
          f"median of {args.repeats} x >= {args.steps} env steps")
    print(f"{'algo':8s} {'env steps/s':>12s} {'runner busy':>12s} {'policy lag':>11s}")
    for name, m in med.items():
        print(f"{name:8s} {m['rate']:12.1f} {m['busy']:12.2f} {m['lag']:11.2f}")
    print(f"impala / ppo env steps/s: {med['impala']['rate'] / med['ppo']['rate']:.2f}x "
          "(the ceiling is 1000/s: 2 runners, 2 ms per step)")


SEPARATE = {"memory": "bench_memory", "sampling": "bench_sampling", "defaults": "bench_defaults",
            "lm-async": "bench_lm", "external": "bench_external", "serve": "bench_serve", "sac": "bench_sac"}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = p.add_subparsers(dest="bench", required=True)
    race = sub.add_parser("cartpole-race", help="time to return 450 on CartPole-v1 vs SB3")
    race.add_argument("--seeds", type=int, default=3)
    race.add_argument("--algo", choices=sorted(PEERS), default="ppo", help="ppo or dqn, each against SB3's tuned one")
    race.add_argument("--target", type=float, default=450.0)
    race.add_argument("--window", type=int, default=20)
    race.add_argument("--sb3-python", help="python of a venv with stable-baselines3 (see scripts/peers)")
    race.add_argument("--reference-checkout", help="another checkout of rlfleet (e.g. the previous commit's "
                      "`git worktree`) raced in the same run, its own scripts/train.py")
    race.add_argument("--reference-pythonpath", help="PYTHONPATH for the reference's run (where its rlfleet "
                      "package is importable from; without it the installed rlfleet runs)")
    scaling = sub.add_parser("fleet-scaling", help="env steps/s: local vs 1 and 2 Ray runners, 2 ms/step env and CartPole")
    scaling.add_argument("--repeats", type=int, default=3)
    scaling.add_argument("--iterations", type=int, default=8)
    start = sub.add_parser("startup", help="seconds from process start to the first iteration")
    start.add_argument("--repeats", type=int, default=3)
    start.add_argument("--reference-checkout", help="another checkout of rlfleet (e.g. the previous commit's "
                       "`git worktree`) started the same way with 2 Ray runners, its own scripts/train.py")
    start.add_argument("--reference-pythonpath", help="PYTHONPATH for the reference's run")
    ivp = sub.add_parser("impala-vs-ppo", help="env steps/s of IMPALA vs synchronous PPO on a 2 ms/step env")
    ivp.add_argument("--repeats", type=int, default=3)
    ivp.add_argument("--steps", type=int, default=4000, help="env steps measured per run (after warm-up)")
    serving = sub.add_parser("serve", help="served policy: latency and actions/s vs a bare forward and minimal Serve")
    serving.add_argument("--seconds", type=float, default=3.0, help="seconds per measured point")
    serving.add_argument("--out", help="write the figures as JSON here")
    external = sub.add_parser("external", help="get_action latency of external simulators with 1, 8, 64 clients")
    external.add_argument("--seconds", type=float, default=5.0)
    external.add_argument("--out", help="write the figures as JSON here")
    external.add_argument("--hostile", action="store_true", help="8 clients alone and beside 4 hostile connections "
                          "of each kind (malformed arrays, huge shapes, silent readers, churn)")
    external.add_argument("--repeats", type=int, default=1, help="--hostile: rounds of every case (medians)")
    external.add_argument("--deadline-s", type=float, default=2.0,
                          help="--hostile: a well-behaved get_action slower than this counts as a timeout")
    lm = sub.add_parser("lm-async", help="GRPO text-addition: async vs sync rollouts with 2 generator runners")
    lm.add_argument("--seeds", type=int, default=3)
    lm.add_argument("--completions", type=int, default=20480, help="completions per run")
    lm.add_argument("--async-requests", type=int, default=1, help="async: requests_per_runner")
    lm.add_argument("--async-staleness", type=int, default=1, help="async: max_staleness")
    lm.add_argument("--async-set", action="append", default=[], metavar="KEY=VALUE",
                    help="more config for the async runs (e.g. tis_cap=2)")
    lm.add_argument("--threads", type=int, nargs="+", default=[1],
                    help="torch threads per process to try; each mode is judged at its best")
    lm.add_argument("--set", action="append", default=["reference_in_runners=true"], metavar="KEY=VALUE",
                    help="more config for both modes (always: reference_in_runners=true, the faster with Ray "
                         "runners in either mode; --set reference_in_runners=false undoes it)")
    defaults = sub.add_parser("defaults", help="the library's defaults vs SB3's PPO on tasks without a tuned example")
    defaults.add_argument("--suite", choices=("mujoco", "broad"), default="mujoco",
                          help="mujoco: 5 tasks; broad: 16 tasks over five families (box2d, minatar, minigrid)")
    defaults.add_argument("--seeds", type=int, default=1)
    defaults.add_argument("--tasks", nargs="+", help="env ids of the suite (default: all of them)")
    defaults.add_argument("--algos", nargs="+", choices=("ppo", "impala", "dqn"), default=["ppo"],
                          help="rlfleet algorithms to run (dqn only on discrete actions)")
    defaults.add_argument("--only", choices=("rlfleet", "sb3", "random"),
                          help="run one side only (random: the random policy's mean return per task)")
    defaults.add_argument("--missing", action="store_true", help="skip runs already in the results file")
    defaults.add_argument("--window", type=int, default=20, help="return = mean of the last N training episodes")
    defaults.add_argument("--pin", action="store_true", help="run two processes at once, a core each")
    defaults.add_argument("--core", type=int, help="pin every run to this core (with --only)")
    defaults.add_argument("--sb3-python", help="python of a venv with stable-baselines3 (see scripts/peers)")
    defaults.add_argument("--results", help="results file (default: scripts/results/defaults_SUITE.jsonl)")
    defaults.add_argument("--table", action="store_true", help="print the table from the results file; run nothing")
    sac = sub.add_parser("sac", help="rlfleet's SAC vs SB3's, both on their defaults, a core each, side by side")
    sac.add_argument("--tasks", nargs="+", default=["Pendulum-v1:20000", "HalfCheetah-v5:100000"],
                     metavar="ENV:STEPS", help="env ids and env-step budgets")
    sac.add_argument("--seeds", type=int, default=3)
    sac.add_argument("--only", choices=("rlfleet", "sb3"), help="run one side only")
    sac.add_argument("--sb3-python", default="/tmp/sb3venv/bin/python",
                     help="python of a venv with stable-baselines3 (see scripts/peers)")
    sac.add_argument("--results", help="results file (default: scripts/results/sac.jsonl)")
    sac.add_argument("--table", action="store_true", help="print the table from the results file; run nothing")
    sampling = sub.add_parser("sampling", help="env steps/s of one local runner vs the bare loop")
    sampling.add_argument("--repeats", type=int, default=5)
    sampling.add_argument("--seconds", type=float, default=2.0, help="seconds per measured point")
    sampling.add_argument("--env", default="CartPole-v1")
    sampling.add_argument("--num-envs", type=int, default=8)
    sampling.add_argument("--fragment-length", type=int, default=64)
    sampling.add_argument("--memory", action="store_true",
                          help="also the runner with a GRU and an LSTM (128 units): the acting cost of memory")
    memory = sub.add_parser("memory", help="PSS of the process tree of PPO with 2 Ray runners vs RLlib's")
    memory.add_argument("--repeats", type=int, default=3)
    memory.add_argument("--iterations", type=int, default=5, help="measure after this iteration's console line")
    memory.add_argument("--reference-checkout", help="another checkout of rlfleet (e.g. the previous commit's "
                        "`git worktree`) measured the same way, its own scripts/train.py")
    memory.add_argument("--reference-pythonpath", help="PYTHONPATH for the reference's run (where its rlfleet "
                        "package is importable from)")
    memory.add_argument("--rllib", action="store_true", help="also RLlib's PPO (scripts/peers/rllib_ppo_memory.py)")
    memory.add_argument("--out", help="write the figures as JSON here")
    args = p.parse_args()
    if args.bench in SEPARATE:  # benchmarks in modules of their own, imported only when run
        # They run from a checkout and are not installed (setup.py): they sit beside this file.
        here = os.path.dirname(os.path.abspath(__file__))
        if here not in sys.path:
            sys.path.insert(0, here)
        importlib.import_module(SEPARATE[args.bench]).main(args)
        return
    {"cartpole-race": cartpole_race, "fleet-scaling": fleet_scaling, "startup": startup,
     "impala-vs-ppo": impala_vs_ppo}[args.bench](args)


if __name__ == "__main__":
    main()

"""Train an algorithm on an env from the command line.

    python scripts/train.py --algo ppo --env CartPole-v1
    python scripts/train.py --algo ppo --env Pendulum-v1 --set lr=1e-3 --stop-timesteps 200000
    python scripts/train.py --config tuned_examples/ppo/CartPole-v1.yaml --seed 3
    python scripts/train.py --algo ppo --env CartPole-v1 --restore runs/ppo_CartPole-v1_X/checkpoint
    rlfleet train --algo ppo --env CartPole-v1        # the same code, from any directory

Without ``--config`` the tuned example for the algo and env is used when one exists.
Exit codes: 0 ran (and reached the return target when one was set), 1 a return target
was set and not reached, 2 bad input (one line on stderr), 3 the run failed (runners or a
simulator kept failing; the checkpoint written so far is kept), 130 interrupted.
"""

from __future__ import annotations

import argparse
import os
import sys
import time

from rlfleet.algorithms import UnknownAlgorithmError, get_config_class
from rlfleet.envs import EnvContractError, EnvFailedError, EnvNotFoundError
from rlfleet.envs.text import RewardError
from rlfleet.rl.env_runner_group import RunnerFailureError
from rlfleet.rl.checkpoint import CheckpointError, load_checkpoint
from rlfleet.rl.config import ConfigError
from rlfleet.rl.experiment import Criteria, load_experiment, run_until
from rlfleet.rl.spaces import UnsupportedSpaceError
from rlfleet.tuned_examples import ROOT as TUNED

BAD_INPUT = (UnknownAlgorithmError, EnvNotFoundError, ConfigError, UnsupportedSpaceError, CheckpointError, EnvContractError)


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description="Train an rlfleet algorithm on an env.")
    p.add_argument("--algo", help="algorithm: ppo, dqn, impala, grpo, lm-ppo (ppo on a text env is lm-ppo)")
    p.add_argument("--env", help="gymnasium id or registered env name")
    p.add_argument("--config", help="tuned-example YAML (algo, env, config, stop, pass)")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="override a config key")
    p.add_argument("--stop-reward", type=float, help="stop when episode_return_mean reaches this")
    p.add_argument("--stop-timesteps", type=int, help="stop after this many env steps")
    p.add_argument("--stop-seconds", type=float, help="stop after this many seconds of training")
    p.add_argument("--seed", type=int)
    p.add_argument("--num-envs-per-runner", type=int)
    p.add_argument("--num-env-runners", type=int, help="env-runner actors on Ray (0: sample in this process)")
    p.add_argument("--num-cpus-per-runner", type=float)
    p.add_argument("--num-learners", type=int, help="learner actors on Ray (0: learn in this process)")
    p.add_argument("--num-gpus-per-learner", type=float)
    p.add_argument("--address", help="join a running Ray cluster ('auto' or host:port)")
    p.add_argument("--logdir", help="progress.jsonl, TensorBoard events, checkpoint (default runs/ALGO_ENV_TIME)")
    p.add_argument("--checkpoint-every", type=int, default=0, metavar="N", help="checkpoint every N iterations")
    p.add_argument("--restore", metavar="DIR", help="continue from a checkpoint directory")
    p.add_argument("--eval", action="store_true", help="evaluate greedily after training")
    p.add_argument("--quiet", action="store_true", help="no per-iteration console line")
    return p.parse_args(argv)


def parse_sets(pairs: list[str]) -> dict[str, object]:
    import yaml

    out: dict[str, object] = {}
    for pair in pairs:
        key, sep, value = pair.partition("=")
        if not sep or not key:
            raise ConfigError(f"--set expects KEY=VALUE, got {pair!r}")
        out[key.strip()] = yaml.safe_load(value)
    return out


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    try:
        return run(args)
    except BAD_INPUT as e:
        print(f"train.py: error: {e}", file=sys.stderr)
        return 2
    except (RunnerFailureError, EnvFailedError, RewardError) as e:
        print(f"train.py: run failed (last checkpoint kept): {e}", file=sys.stderr)
        return 3


def run(args: argparse.Namespace) -> int:
    experiment = None
    if args.config:
        experiment = load_experiment(args.config)
    elif args.algo and args.env:
        tuned = os.path.join(TUNED, args.algo.lower(), f"{args.env.replace('/', '-')}.yaml")
        if os.path.exists(tuned):
            experiment = load_experiment(tuned)
    algo_name = args.algo or (experiment.algo if experiment else None)
    env = args.env or (experiment.env if experiment else None)
    if not algo_name or not env:
        raise ConfigError("give --algo and --env, or --config FILE")
    config_cls = get_config_class(algo_name, env)
    if experiment is not None and experiment.algo != algo_name.lower():
        raise ConfigError(f"{experiment.path} is for algo {experiment.algo!r}, not {algo_name!r}")

    restored_logdir = None
    if args.restore:
        restored_logdir = load_checkpoint(args.restore)["config"].get("logdir")
    logdir = args.logdir or restored_logdir or os.path.join(
        "runs", f"{algo_name.lower()}_{env.replace('/', '-')}_{time.strftime('%Y%m%d-%H%M%S')}"
    )
    values: dict[str, object] = dict(experiment.config) if experiment else {}
    values.update(env=env, logdir=logdir, log_to_console=not args.quiet)
    if args.seed is not None:
        values["seed"] = args.seed
    for key in ("num_envs_per_runner", "num_env_runners", "num_cpus_per_runner", "num_learners",
                "num_gpus_per_learner", "address"):
        if getattr(args, key) is not None:
            values[key] = getattr(args, key)
    values.update(parse_sets(args.set))
    config = config_cls.from_dict(values, source=experiment.path if experiment else "config")

    stop = experiment.stop if experiment else Criteria()
    stop = Criteria(
        episode_return_mean=args.stop_reward if args.stop_reward is not None else stop.episode_return_mean,
        env_steps=args.stop_timesteps if args.stop_timesteps is not None else stop.env_steps,
        time_s=args.stop_seconds if args.stop_seconds is not None else stop.time_s,
    )
    no_stop = stop.episode_return_mean is None and stop.env_steps is None and stop.time_s is None
    if no_stop:
        stop.env_steps = 100_000

    algo = config.build()
    where = f"{experiment.path}" if experiment else "defaults"
    print(f"training {config.algo_name} on {env} ({where}); logs in {logdir}", flush=True)
    if no_stop:
        print("no stop criterion given; stopping at 100000 env steps", flush=True)
    try:
        if args.restore:
            algo.restore(args.restore)
            print(f"restored {args.restore} at iteration {algo.iteration}, env step {algo.env_steps}", flush=True)
        summary = run_until(
            algo, stop, checkpoint_dir=os.path.join(logdir, "checkpoint"), checkpoint_every=args.checkpoint_every
        )
        if args.eval and not summary["interrupted"]:
            evaluation = algo.evaluate()
            summary.update(evaluation)
            print(f"evaluation: return {evaluation['evaluation/episode_return_mean']:.2f} "
                  f"over {evaluation['evaluation/num_episodes']} episodes", flush=True)
    finally:
        algo.stop()
    ret = summary.get("episode_return_mean", float("nan"))
    print(
        f"done: {summary.get('iteration', 0)} iterations, {summary.get('env_steps', 0)} env steps, "
        f"{summary.get('time_s', 0.0):.1f} s, return {ret:.2f} (last {config.metrics_smoothing_episodes} episodes)"
        + (f", target {stop.episode_return_mean} {'reached' if summary['reached'] else 'NOT reached'}"
           if stop.episode_return_mean is not None else "")
        + f"; checkpoint {summary['checkpoint']}",
        flush=True,
    )
    if summary["interrupted"]:
        return 130
    return 1 if stop.episode_return_mean is not None and not summary["reached"] else 0


if __name__ == "__main__":
    sys.exit(main())

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
import signal
import sys
import time

STARTED = time.perf_counter()  # the start-up breakdown counts from here (rl/algorithm.py startup/*)

# Only argparse (and the registry's names) before the arguments are parsed: --help must
# not pay for importing torch.
from rlfleet.algorithms import ALGORITHMS  # noqa: E402
EPILOG = """\
exit codes: 0 the run finished (and reached its return target when one was set); 1 a
return target was set and not reached; 2 bad input (one line on stderr naming the
culprit); 3 the run failed (runners or a simulator kept failing, or the disk is full; the
last checkpoint is kept); 130 interrupted (a checkpoint is written first).

logs: LOGDIR/progress.jsonl (one JSON line per iteration), TensorBoard event files and
LOGDIR/checkpoint/; LOGDIR defaults to runs/ALGO_ENV_TIME. A logdir that already holds a
run is refused unless --restore continues it; a restored run writes beside the checkpoint
it was given (or to --logdir); one restored from a kept copy (checkpoints/iteration-N/,
checkpoint_best/) forks into a new run directory, leaving its run as it was.
"""


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description="Train an rlfleet algorithm on an env.", epilog=EPILOG,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--algo", help=f"algorithm: {', '.join(ALGORITHMS)} (ppo on a text env is lm-ppo; "
                                  "--list-algorithms says what each is)")
    p.add_argument("--print-config", action="store_true",
                   help="print every config value with where it came from (default, the spaces' family defaults, "
                        "the tuned example, flags, --set), and exit")
    p.add_argument("--list-algorithms", action="store_true", help="print each algorithm with its action spaces, and exit")
    p.add_argument("--env", help="gymnasium id or registered env name")
    p.add_argument("--import", dest="imports", action="append", default=[], metavar="MODULE",
                   help="your module (import name, module:function to call, or .py path) that registers envs; "
                        "shipped to Ray workers")
    p.add_argument("--config", help="tuned-example YAML (algo, env, config, stop, pass)")
    p.add_argument("--defaults", action="store_true",
                   help="train on the library's defaults even where --algo/--env has a tuned example")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="override a config key")
    p.add_argument("--stop-reward", type=float, help="stop when episode_return_mean (or --stop-metric) reaches this")
    p.add_argument("--stop-metric", help="the progress-row key --stop-reward applies to (default episode_return_mean)")
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
    p.add_argument("--quiet", action="store_true", help="no per-iteration console line (or bar, on a terminal)")
    p.add_argument("--log", metavar="NAMES", help="comma-separated loggers besides progress.jsonl: csv, tensorboard, "
                                                  "mlflow, wandb (default csv,tensorboard; mlflow and wandb are extras)")
    p.add_argument("--track", action="store_true", help="track the run in Weights & Biases (adds wandb to --log; "
                                                        "offline without an API key)")
    return p.parse_args(argv)


def parse_sets(pairs: list[str]) -> dict[str, object]:
    from rlfleet.rl.config_values import parse_key_values

    return parse_key_values(pairs, flag="--set")


def list_algorithms() -> None:
    """One line per registry entry: its name, action spaces and package docstring's first line."""
    import importlib

    from rlfleet.algorithms import get_config_class

    for name in ALGORITHMS:
        cls = get_config_class(name)
        # a folder's package docstring says what the algorithm is; a variant's own module does
        home = cls.__module__.rsplit(".", 1)[0] if cls.__module__.endswith(".config") else cls.__module__
        doc = (importlib.import_module(home).__doc__ or "").strip().split("\n\n")[0]
        kinds = ", ".join(t.__name__ for t in cls.action_space_types) or "tokens: text envs"
        print(f"{name:8} [{kinds}] {' '.join(doc.split())}")


def print_config(config) -> None:
    """Every key, its value and the layer it came from, with the fields left to the env's
    spaces filled in as a run fills them (the env is made once to read its spaces)."""
    if hasattr(config, "with_family_defaults"):
        config = config.algorithm_class().runner_factory_class(config).config
    for key, value in config.to_dict().items():
        print(f"{key:32} {value!r:40} {config.source_of(key)}")


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if args.list_algorithms:
        list_algorithms()
        return 0
    interrupt_once()
    try:
        return run(args)
    except Exception as e:
        code = exit_code_of(e)
        if code == 2:
            print(f"train.py: error: {e}", file=sys.stderr)
        elif code == 3:
            print(f"train.py: run failed (last checkpoint kept): {e}", file=sys.stderr)
        else:
            raise
        return code
    finally:
        # Done: a late Ctrl-C must not turn the exit code into a death by signal while
        # the interpreter shuts down.
        signal.signal(signal.SIGINT, signal.SIG_IGN)


def exit_code_of(error: Exception) -> int | None:
    """2 for bad input, 3 for a run that failed, None for a bug. The error classes are
    imported here, once one is raised: importing them up front would load torch before
    ``config.build()`` starts Ray, and start-up would lose the overlap of the two."""
    from rlfleet.algorithms import UnknownAlgorithmError
    from rlfleet.envs import EnvConfigError, EnvContractError, EnvFailedError, EnvNotFoundError, UserModuleError
    from rlfleet.envs.multi_agent import MultiAgentEnvError
    from rlfleet.envs.text import RewardError
    from rlfleet.rl.checkpoint import CheckpointError, CheckpointWriteError
    from rlfleet.rl.config import ConfigError
    from rlfleet.rl.runners.env_runner_group import RunnerFailureError
    from rlfleet.rl.runners.external_runner import ExternalConfigError, ExternalTimeoutError
    from rlfleet.rl.spaces import UnsupportedSpaceError
    from rlfleet.runtime import ClusterUnreachableError, InsufficientResourcesError

    bad_input = (UnknownAlgorithmError, EnvNotFoundError, EnvConfigError, ConfigError, UnsupportedSpaceError,
                 CheckpointError, EnvContractError, ClusterUnreachableError, InsufficientResourcesError,
                 UserModuleError, ExternalConfigError, MultiAgentEnvError)
    if isinstance(error, bad_input):
        return 2
    if isinstance(error, (RunnerFailureError, EnvFailedError, RewardError, CheckpointWriteError, ExternalTimeoutError)):
        return 3
    return None


def interrupt_once() -> None:
    """The first Ctrl-C stops the run (checkpoint, summary, exit 130); more presses while
    it stops are ignored, so they cannot cut the checkpoint, the shutdown or the summary
    short. The one place this policy lives."""
    def first(signum: int, frame: object) -> None:
        signal.signal(signal.SIGINT, lambda *_: print("stopping; Ctrl-C again is ignored", file=sys.stderr, flush=True))
        raise KeyboardInterrupt

    signal.signal(signal.SIGINT, first)


def checkpoint_run_dir(path: str) -> str | None:
    """The run directory a checkpoint continues: the folder holding ``checkpoint/``. A kept
    copy (``checkpoints/iteration-<k>/``, ``checkpoint_best/``) continues nowhere: carrying
    on in its run would drop that run's later rows and overwrite its latest checkpoint, so
    it forks into a new directory (None)."""
    path = os.path.abspath(path)
    if os.path.isfile(path):
        path = os.path.dirname(path)
    return os.path.dirname(path) if os.path.basename(path) == "checkpoint" else None


def prepare_logdir(logdir: str, *, restoring: bool, default: bool) -> str:
    """A directory this run may write: created if missing; one that holds another run is
    refused (or, for the default name, made unique), never appended to by accident."""
    from rlfleet.rl.config import ConfigError

    if default:
        base, n = logdir, 1
        while os.path.exists(logdir):  # two runs started in the same second
            n += 1
            logdir = f"{base}-{n}"
    if os.path.exists(logdir) and not os.path.isdir(logdir):
        raise ConfigError(f"--logdir {logdir!r} is a file, not a directory")
    try:
        os.makedirs(logdir, exist_ok=True)
    except OSError as e:
        raise ConfigError(f"--logdir {logdir!r}: cannot create it: {e.strerror}") from None
    held = [name for name in ("progress.jsonl", "checkpoint") if os.path.exists(os.path.join(logdir, name))]
    if held and not restoring:
        raise ConfigError(f"--logdir {logdir!r} already holds a run ({', '.join(held)}); continue it with "
                          f"--restore {os.path.join(logdir, 'checkpoint')}, or give another --logdir")
    return logdir


def run(args: argparse.Namespace) -> int:
    from rlfleet.algorithms import get_config_class
    from rlfleet.rl.checkpoint import CheckpointError, load_checkpoint
    from rlfleet.rl.config import ConfigError, scaled_by
    from rlfleet.rl.progress import ProgressBar, is_terminal
    from rlfleet.scripts.tools.experiment import RETURN, Criteria, load_experiment, run_until
    from rlfleet.tuned_examples import ROOT as TUNED

    from rlfleet.envs import import_user_module

    for module in args.imports:  # before anything resolves the env name
        import_user_module(module)
    experiment = None
    if args.config and args.defaults:
        raise ConfigError("--defaults trains without a tuned example; it cannot go with --config")
    if args.config:
        experiment = load_experiment(args.config)
    elif args.algo and args.env and not args.defaults:
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
    if args.checkpoint_every < 0:
        raise ConfigError(f"--checkpoint-every must be >= 0 (0: only at the end), got {args.checkpoint_every}")
    stop = experiment.stop if experiment else Criteria()
    metric = args.stop_metric or stop.metric
    threshold = args.stop_reward if args.stop_reward is not None else stop.episode_return_mean
    stop = Criteria.from_dict({
        **({"episode_return_mean": threshold} if metric == RETURN else {"metric": metric, "threshold": threshold}),
        "env_steps": args.stop_timesteps if args.stop_timesteps is not None else stop.env_steps,
        "time_s": args.stop_seconds if args.stop_seconds is not None else stop.time_s,
    }, source="stop criteria (--stop-*)")
    no_stop = stop.episode_return_mean is None and stop.env_steps is None and stop.time_s is None
    if no_stop:
        stop.env_steps = 100_000

    # One layered merge (rl/config.py AlgorithmConfig.layered); each layer's values are
    # checked under its own name.
    flags: dict[str, object] = {"log_to_console": not args.quiet}
    if args.imports:
        flags["user_modules"] = [os.path.abspath(m) if m.endswith(".py") else m for m in args.imports]
    if args.seed is not None:
        flags["seed"] = args.seed
    if args.log is not None or args.track:
        names = [n.strip() for n in (args.log or "").split(",") if n.strip()] if args.log is not None else None
        flags["log"] = (names if names is not None else list(config_cls().log)) + (["wandb"] if args.track else [])
    for key in ("num_envs_per_runner", "num_env_runners", "num_cpus_per_runner", "num_learners",
                "num_gpus_per_learner", "address"):
        if getattr(args, key) is not None:
            flags[key] = getattr(args, key)
    example = dict(experiment.config) if experiment else {}
    config = config_cls.layered([(experiment.path if experiment else "config", {**example, "env": env}),
                                 ("command line", flags), ("--set", parse_sets(args.set))])
    if config.source_of("lr_schedule") == scaled_by("--set"):
        print(f"--set lr={config.lr} scales the example's lr_schedule to {config.lr_schedule}", flush=True)
    if args.print_config:
        print_config(config)
        return 0

    if args.restore:
        # A missing, corrupt or foreign checkpoint is refused before anything is built or written.
        saved = load_checkpoint(args.restore)["algo"]
        if saved != config.algo_name:
            raise CheckpointError(f"--restore {args.restore!r} holds a {saved} run, not {config.algo_name}: "
                                  f"continue it with --algo {saved}")
        if getattr(config, "warmup_steps", 0):  # the checkpoint holds the trained LM: no warm-up first
            config = config.updated({"warmup_steps": 0}, source="--restore")
    default = os.path.join("runs", f"{algo_name.lower()}_{env.replace('/', '-')}_{time.strftime('%Y%m%d-%H%M%S')}")
    continued = checkpoint_run_dir(args.restore) if args.restore and not args.logdir else None
    logdir = args.logdir or continued or default
    default_name = not args.logdir and not continued
    created = default_name or not os.path.exists(logdir)  # a default name is always a new directory
    logdir = prepare_logdir(logdir, restoring=bool(args.restore) and not default_name, default=default_name)
    config = config.updated({"logdir": logdir}, source="--logdir")

    built_at = time.perf_counter()
    try:
        algo = config.build()
    except Exception:
        if created and os.path.isdir(logdir) and not os.listdir(logdir):
            os.rmdir(logdir)  # a run that never started leaves no empty run directory behind
        raise
    algo.startup = {"startup/imports_and_config_s": built_at - STARTED,
                    "startup/algorithm_imports_s": algo.init_started - built_at, **algo.startup}
    where = f"{experiment.path}" if experiment else "defaults"
    print(f"training {config.algo_name} on {env} ({where}); logs in {logdir}", flush=True)
    if no_stop:
        print("no stop criterion given; stopping at 100000 env steps", flush=True)
    summary: dict[str, object] = {"interrupted": True, "reached": False, "checkpoint": None}
    if config.log_to_console and is_terminal():  # a live bar with an ETA; the plain line in logs and pipes
        algo.logger.attach_bar(ProgressBar(env_steps=stop.env_steps, seconds=stop.time_s, metric=metric,
                                           target=threshold, desc=f"{config.algo_name} {env}"))
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
        f"{summary.get('time_s', 0.0):.1f} s, return {ret:.2f} (last {config.metrics_smoothing_episodes} episodes), "
        f"best {summary.get('episode_return_best', float('nan')):.2f}"
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

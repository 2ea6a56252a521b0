"""Search hyperparameters of a tuned example on Ray Tune; the winner becomes a tuned example.

    python scripts/tune.py --config tuned_examples/ppo/CartPole-v1.yaml --num-samples 8 --scheduler asha \\
        --search 'lr={loguniform: [1e-4, 3e-3]}' --search 'num_epochs={choice: [4, 10, 20]}'
    python scripts/tune.py --resume --logdir runs/tune_ppo_CartPole-v1_X     # continue an interrupted search
    rlfleet tune ...                                                        # the same code

The space comes from the example's ``search:`` section and ``--search`` (which wins);
every trial runs the example's config with the sampled values until its ``stop``.
Everything lands under LOGDIR: search.json (the settings), trials/<id>/ (progress.jsonl,
TensorBoard, the trial's record), tune/ (Ray Tune's state), results.csv and results.md (the
ranked table), best.yaml (the winner as a tuned example: ``train.py --config`` and
``run_regression.py`` take it as it is).
"""

from __future__ import annotations

import argparse
import math
import os
import sys
import time

EPILOG = """\
exit codes: 0 the best trial reached the example's pass threshold; 1 no trial did; 2 bad
input (one line on stderr); 130 interrupted (continue with --resume --logdir LOGDIR).
"""


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description="Search hyperparameters of a tuned example on Ray Tune.", epilog=EPILOG,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--config", help="the tuned example to search around (its search: section is the space)")
    p.add_argument("--search", action="append", default=[], metavar="KEY=SPEC",
                   help="a searched key, SPEC in YAML: {loguniform: [1e-4, 3e-3]}, {choice: [4, 10]}, "
                        "{uniform: [a, b]}, {randint: [a, b]}, {grid: [...]}")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="override a base config key")
    p.add_argument("--num-samples", type=int, default=8, help="configs to sample (each grid point counts once)")
    p.add_argument("--scheduler", default="fifo", help="fifo, asha (early stopping) or pbt")
    p.add_argument("--search-alg", default="random", help="random, or optuna (TPE; pip install '.[tune]')")
    p.add_argument("--cpus-per-trial", type=float, default=1.0)
    p.add_argument("--num-cpus", type=int, help="CPUs of the embedded Ray instance (default: all)")
    p.add_argument("--address", help="join a running Ray cluster")
    p.add_argument("--stop-timesteps", type=int, help="each trial's env-step budget (default: the example's stop)")
    p.add_argument("--perturbation-interval", type=int, metavar="STEPS", help="PBT: env steps between perturbations")
    p.add_argument("--confirm-seeds", type=int, default=0, metavar="K",
                   help="re-run the top configs on K fresh seeds; the winner by the median")
    p.add_argument("--confirm-top", type=int, default=3, metavar="N", help="how many configs --confirm-seeds re-runs")
    p.add_argument("--seed", type=int, default=0, help="seed of the search's sampling")
    p.add_argument("--metric", help="progress-row key to maximise instead of the example's target, e.g. custom/success "
                                    "(an info_metrics key) or evaluation/episode_return_mean")
    p.add_argument("--threshold", type=float, help="the value --metric must reach for a trial to count as reached")
    p.add_argument("--logdir", help="the search's directory (default runs/tune_ALGO_ENV_TIME)")
    p.add_argument("--resume", action="store_true", help="continue the search in --logdir")
    return p.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    from rlfleet.algorithms import UnknownAlgorithmError
    from rlfleet.rl.config import ConfigError
    from rlfleet.runtime import ClusterUnreachableError

    try:
        options, exp, config_class = build(args)
    except (ConfigError, UnknownAlgorithmError, ClusterUnreachableError) as e:
        print(f"tune.py: error: {e}", file=sys.stderr)
        return 2
    return run(args, options, exp, config_class)


def build(args: argparse.Namespace):  # -> (SearchOptions, Experiment, config class)
    from rlfleet.algorithms import get_config_class
    from rlfleet.rl.config import ConfigError
    from rlfleet.scripts.tools.experiment import load_experiment
    from rlfleet.scripts.tools.search import parse_search_flags
    from rlfleet.scripts.tools.search_run import SearchOptions, prepare
    from rlfleet.scripts.train import parse_sets

    if args.resume:
        if not args.logdir:
            raise ConfigError("--resume needs --logdir: the directory of the search to continue")
        given = [flag for flag, value in (("--config", args.config), ("--search", args.search), ("--set", args.set))
                 if value]
        if given:
            raise ConfigError(f"--resume takes the search's settings from {args.logdir}/search.json; drop {given[0]}")
        from rlfleet.runtime.tune import can_resume

        options = SearchOptions.load(args.logdir)
        exp = load_experiment(options.source)
        config_class = get_config_class(exp.algo, exp.env)
        prepare(options, exp, config_class)  # the checks of a new search, before the engine touches the directory
        _require_tune()
        if not can_resume(options.directory):
            raise ConfigError(f"--resume: {args.logdir!r} holds no Tune state (tune/): the search never got going; "
                              "start it again with --config and a new --logdir")
        return options, exp, config_class
    if not args.config:
        raise ConfigError("--config is required: the tuned example to search around")
    exp = load_experiment(args.config)
    config_class = get_config_class(exp.algo, exp.env)
    search = {**(exp.search or {}), **parse_search_flags(args.search)}
    algo_alg = {"random": None, "none": None, "optuna": "optuna"}
    if args.search_alg not in algo_alg:
        raise ConfigError(f"--search-alg {args.search_alg!r}: choose random or optuna")
    if algo_alg[args.search_alg] == "optuna":
        import importlib.util

        if importlib.util.find_spec("optuna") is None:
            raise ConfigError("--search-alg optuna needs optuna: pip install 'rlfleet[tune]'")
    directory = args.logdir or os.path.join("runs", f"tune_{exp.algo}_{exp.env.replace('/', '-')}_"
                                                    f"{time.strftime('%Y%m%d-%H%M%S')}")
    if os.path.isdir(directory) and os.listdir(directory):
        raise ConfigError(f"--logdir {directory!r} already holds files; continue a search there with --resume, "
                          "or choose a new directory")
    options = SearchOptions(
        source=os.path.abspath(args.config), directory=os.path.abspath(directory), search=search,
        overrides=parse_sets(args.set), scheduler=args.scheduler, search_alg=algo_alg[args.search_alg],
        num_samples=args.num_samples, cpus_per_trial=args.cpus_per_trial, confirm_seeds=args.confirm_seeds,
        confirm_top=args.confirm_top, perturbation_interval=args.perturbation_interval,
        stop_env_steps=args.stop_timesteps, seed=args.seed, address=args.address, num_cpus=args.num_cpus,
        metric=args.metric, threshold=args.threshold)
    prepare(options, exp, config_class)  # every check before a directory is made
    _require_tune()
    os.makedirs(directory, exist_ok=True)
    options.save()
    return options, exp, config_class


def _require_tune() -> None:
    from rlfleet.rl.config import ConfigError

    try:
        import ray.tune  # noqa: F401
    except ImportError as e:  # plain ray has ray.tune, which fails to import without its extras
        raise ConfigError(f"searching needs Ray Tune: pip install 'rlfleet[tune]' ({e})") from None


def run(args: argparse.Namespace, options, exp, config_class) -> int:
    from rlfleet.scripts.tools.search_run import run_search

    started = time.perf_counter()
    print(f"[search] {exp.algo} on {exp.env}: {options.scheduler}, {options.num_samples} samples over "
          f"{', '.join(sorted(options.search))}; logs in {options.directory}", flush=True)
    from rlfleet.scripts.tools.search import parse_search, schedule_note

    from rlfleet.rl.progress import count_bar

    specs = parse_search(options.search, config_class, {**exp.config, **options.overrides, "env": exp.env},
                         source=options.source)
    note = schedule_note({**exp.config, **options.overrides}, specs)
    if note:
        print(f"[search] {note}", flush=True)
    # on a terminal, a bar over the trials (each grid point runs num_samples times), with an ETA
    grid = math.prod(len(spec.args) for spec in specs.values() if spec.kind == "grid")
    bar = count_bar(options.num_samples * grid, unit=" trials", desc="search")
    try:
        outcome = run_search(options, exp, config_class, resume=args.resume,
                             echo=bar.write if bar is not None else lambda line: print(line, flush=True),
                             on_trial_end=(lambda: bar.update(1)) if bar is not None else None)
    except KeyboardInterrupt:
        print(f"tune.py: interrupted; continue with --resume --logdir {options.directory}", file=sys.stderr)
        return 130
    finally:
        if bar is not None:
            bar.close()
    print(outcome.table)
    print(f"[search] {len(outcome.ranked)} trials in {time.perf_counter() - started:.0f} s; results in "
          f"{options.directory}/results.md")
    if outcome.best_yaml:
        print(f"[search] best config: {outcome.best_yaml}")
    return 0 if outcome.best is not None and outcome.best.reached else 1


if __name__ == "__main__":
    sys.exit(main())

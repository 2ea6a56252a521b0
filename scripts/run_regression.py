"""Run tuned examples and report pass/fail, optionally against a baseline.

    python scripts/run_regression.py --tag quick --seeds 3
    python scripts/run_regression.py tuned_examples/ppo/CartPole-v1.yaml --seeds 1 --baseline tuned_examples/baseline_quick.json
    python scripts/run_regression.py --tag quick --seeds 3 --out tuned_examples/baseline_quick.json
    python scripts/run_regression.py --tag quick --seeds 3 --plot quick.png   # needs pip install 'rlfleet[plot]'

Exit code 0 when every example passes (and nothing regressed), 1 on a fail or a
regression, 2 on a bad example file (one line naming the file and the key).
"""

from __future__ import annotations

import argparse
import json
import os
import sys

from rlfleet.algorithms import UnknownAlgorithmError, get_config_class
from rlfleet.scripts.tools import plots, regression
from rlfleet.rl.config import ConfigError
from rlfleet.rl.progress import count_bar
from rlfleet.runtime import make_runtime
from rlfleet.tuned_examples import ROOT as TUNED

# Every seed runs as its own process of the installed train entry point: isolated seeds,
# threads and Ray instances, and whole-process timings.
TRAIN_COMMAND = [sys.executable, "-m", "rlfleet.scripts.train"]


def example_key(path: str) -> str:
    """How results name an example: ``tuned_examples/<algo>/<env>.yaml`` for a shipped one
    (wherever the package is installed), else the path relative to this directory."""
    path = os.path.abspath(path)
    if path.startswith(TUNED + os.sep):
        return os.path.join("tuned_examples", os.path.relpath(path, TUNED))
    return os.path.relpath(path)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description="Run tuned examples; print a pass/fail table.")
    p.add_argument("paths", nargs="*", help="example files or globs (default: all tuned examples)")
    p.add_argument("--seeds", type=int, default=1)
    p.add_argument("--tag", help="only examples with this tag (quick, long)")
    p.add_argument("--baseline", help="results JSON to compare against")
    p.add_argument("--tolerance", type=float, default=0.5, help="allowed rise of env steps to the threshold before a regression (0.5 = +50%%)")
    p.add_argument("--out", help="write the results JSON here")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="override a config key in every run")
    p.add_argument("--import", dest="imports", action="append", default=[], metavar="MODULE",
                   help="your module that registers envs, imported by every run (see train.py --import)")
    p.add_argument("--parallel", type=int, default=0, metavar="N",
                   help="run seeds as Ray tasks on N CPUs (or on the cluster of --address); default one after another")
    p.add_argument("--address", help="Ray cluster to run the tasks on, with --parallel")
    p.add_argument("--plot", metavar="PNG", help="draw each example's seeds against env steps, with the pass bar, "
                   "one subplot per example (needs pip install 'rlfleet[plot]')")
    args = p.parse_args(argv)
    try:
        if args.plot:  # before any seed runs: a missing extra or directory is found in a second, not an hour
            plots.require_matplotlib()
            plots.check_out(args.plot)
    except plots.PlotError as e:
        print(f"run_regression.py: error: {e}", file=sys.stderr)
        return 2
    try:
        paths = regression.find_examples(args.paths, TUNED, args.tag)
        experiments = [regression.validate(path, get_config_class) for path in paths]
        baseline = None
        if args.baseline:
            with open(args.baseline, encoding="utf-8") as f:
                baseline = json.load(f)["examples"]
    except (ConfigError, UnknownAlgorithmError) as e:
        print(f"run_regression.py: error: {e}", file=sys.stderr)
        return 2
    except (OSError, json.JSONDecodeError, KeyError) as e:
        print(f"run_regression.py: error: cannot read baseline {args.baseline}: {e}", file=sys.stderr)
        return 2

    command = TRAIN_COMMAND + [arg for m in args.imports for arg in ("--import", os.path.abspath(m) if m.endswith(".py") else m)]
    tasks = [regression.SeedTask(exp, seed, command, args.set) for exp in experiments for seed in range(args.seeds)]
    for exp in experiments:
        print(f"{example_key(exp.path)}: {args.seeds} seed(s), target {exp.pass_criteria.episode_return_mean} "
              f"within {exp.pass_criteria.env_steps} env steps / {exp.pass_criteria.time_s} s", flush=True)

    bar = count_bar(len(tasks), unit=" seeds", desc="regression")  # on a terminal: seeds done, rate, ETA

    def report(task: regression.SeedTask, r: regression.SeedResult) -> None:
        line = (f"    {example_key(task.experiment.path)} seed {r.seed}: "
                f"{'reached' if r.reached else 'NOT reached'}, final return {r.final_return}, "
                f"threshold at {r.env_steps_to_threshold} env steps / {r.seconds_to_threshold} s")
        if bar is None:
            print(line, flush=True)
        else:
            bar.write(line)
            bar.update(1)

    runtime = make_runtime("ray", num_cpus=args.parallel, address=args.address) if args.parallel else make_runtime("local")
    try:
        results = regression.run_all(tasks, runtime, report)
    finally:
        runtime.shutdown()
        if bar is not None:
            bar.close()
    summaries, panels = {}, []
    for exp in experiments:
        key = example_key(exp.path)
        seeds = [r for t, r in zip(tasks, results) if t.experiment is exp]
        summaries[key] = regression.summarise(key, seeds)
        verdict = f"{'PASS' if summaries[key]['passed'] else 'FAIL'} ({summaries[key]['seeds_passed']}/{len(seeds)} seeds)"
        panels.append(plots.regression_panel(f"{key}: {verdict}", exp.pass_criteria, seeds))

    problems, notes = regression.compare(summaries, baseline, args.tolerance) if baseline else ([], [])
    print()
    print(regression.format_table(summaries, problems))
    for line in problems:
        print(f"REGRESSION {line}")
    for line in notes:
        print(f"note {line}")
    if args.out:
        with open(args.out, "w", encoding="utf-8") as f:
            json.dump({"machine": regression.machine(), "seeds": args.seeds, "examples": summaries}, f, indent=2)
            f.write("\n")
    plot_failed = False
    if args.plot:
        try:
            plots.draw_regression(panels, args.plot)
            print(f"wrote {args.plot}")
        except plots.PlotError as e:  # the results above stand; the exit code says the plot is missing
            print(f"run_regression.py: error: {e}", file=sys.stderr)
            plot_failed = True
    failed = [k for k, s in summaries.items() if not s["passed"]]
    print(f"\n{len(summaries) - len(failed)} passed, {len(failed)} failed, {len(problems)} regressions")
    return 1 if failed or problems else 2 if plot_failed else 0


if __name__ == "__main__":
    sys.exit(main())

"""Learning curves of runs, from their progress.jsonl, as a PNG.

    rlfleet plot runs/ppo_seed* --out curves.png
    rlfleet plot 'runs/a_*' 'runs/b_*' --label a --label b --x seconds --out ab.png
    rlfleet plot runs/dqn_1 --metric evaluation/episode_return_mean --out eval.png

Each positional argument is one group, a run directory or a glob of them (the seeds of one
config; quote it so the shell leaves it to the plot): drawn as the mean across seeds with a
bootstrap 95% confidence band, where every seed has data. Needs the plot extra
(pip install 'rlfleet[plot]'). Exit codes: 0 written; 2 bad input (one line, no file).
"""

from __future__ import annotations

import argparse
import sys

from rlfleet.scripts.tools import plots


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="rlfleet plot", description="Plot learning curves of runs (mean and 95%% CI over seeds).",
                                formatter_class=argparse.RawDescriptionHelpFormatter,
                                epilog="exit codes: 0 written; 2 bad input (one line, no file written)")
    p.add_argument("groups", nargs="+", metavar="RUN_OR_GLOB", help="a run directory or a glob of them: one curve each")
    p.add_argument("--x", default="env_steps", choices=tuple(plots.X_KEYS), help="the x axis (default env_steps)")
    p.add_argument("--out", required=True, help="the PNG to write (replaced atomically)")
    p.add_argument("--metric", default="episode_return_mean", help="the progress key to plot (default episode_return_mean)")
    p.add_argument("--label", action="append", dest="labels", metavar="LABEL",
                   help="the legend label of a group, once per group in order (default: the argument)")
    p.add_argument("--title", help="the figure's title")
    return p.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    try:
        plots.require_matplotlib()
        plots.check_out(args.out)
        found = plots.curves(args.groups, x=args.x, metric=args.metric, labels=args.labels)
        plots.draw_curves(found, args.out, x=args.x, metric=args.metric, title=args.title)
    except plots.PlotError as e:
        print(f"plot.py: error: {e}", file=sys.stderr)
        return 2
    print(f"wrote {args.out}: " + "; ".join(f"{c.label}: {len(c.runs)} seed(s), {len(c.x)} points" for c in found))
    return 0


if __name__ == "__main__":
    sys.exit(main())

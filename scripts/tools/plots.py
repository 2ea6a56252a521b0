"""Learning curves from runs' ``progress.jsonl``: the numbers (:func:`curves`), then the
picture (:func:`draw_curves`, :func:`draw_regression`).

A group is the seeds of one config: a run directory or a glob of them. Its curve is the
mean across seeds with a bootstrap 95% confidence band. Seeds log at different x values
(wall seconds always, env steps when iterations differ), so each seed's curve is
interpolated onto the group's grid: the union of the seeds' own x values, kept only where
every seed has data (a mean over the seeds still running is a different quantity, and jumps
where one ends).

Drawing needs matplotlib (the ``plot`` extra) and uses the Agg canvas directly: no pyplot,
no display, no global backend switch. A PNG is written atomically (temporary file, then
``os.replace``), so a reader never sees half a file and a failure leaves the old one.
"""

from __future__ import annotations

import dataclasses
import glob
import importlib
import json
import math
import os
from typing import Any, Sequence

import numpy as np

from rlfleet.rl.config_values import closest

X_KEYS = {"env_steps": "env_steps", "seconds": "time_s"}
"""``--x`` choice: the progress-row key it reads."""
X_LABELS = {"env_steps": "env steps", "seconds": "wall seconds"}
BOOTSTRAP_SAMPLES = 1000
BOOTSTRAP_SEED = 0  # the band of the same runs is the same picture every time
INSTALL = "pip install 'rlfleet[plot]'"


class PlotError(ValueError):
    """Runs, a metric or an output that cannot be plotted; the message names it (one line)."""


@dataclasses.dataclass
class Curve:
    """One group's curve: mean and 95% band over its seeds on a common x grid."""

    label: str
    runs: list[str]
    """The run directories (seeds), in sorted order."""
    x: np.ndarray  # (G,) the grid
    mean: np.ndarray  # (G,)
    low: np.ndarray  # (G,) 2.5th percentile of the bootstrap means
    high: np.ndarray  # (G,) 97.5th percentile
    per_seed: np.ndarray  # (S, G) each seed interpolated onto the grid
    seed_x: list[np.ndarray]
    """Each seed's own x values (rows with a value of the metric), as logged."""
    seed_y: list[np.ndarray]
    """Each seed's metric values at ``seed_x``."""


def require_matplotlib() -> None:
    """Refuse, naming the extra, before any work is done for a picture that cannot be drawn."""
    try:
        for module in ("matplotlib", "matplotlib.backends.backend_agg"):
            importlib.import_module(module)
    except ImportError as e:
        raise PlotError(f"plotting needs matplotlib: {INSTALL} ({e})") from None


def resolve_group(pattern: str) -> list[str]:
    """The run directories a group argument names: itself, or what its glob matches."""
    if os.path.isdir(pattern):
        runs = [pattern]
    else:
        runs = sorted(p for p in glob.glob(pattern) if os.path.isdir(p))
        if not runs:
            raise PlotError(f"no run directory matches {pattern!r}")
    for run in runs:
        if not os.path.isfile(os.path.join(run, "progress.jsonl")):
            raise PlotError(f"{run}: no progress.jsonl (not a run directory, or nothing logged yet)")
    return runs


def read_progress(run: str) -> list[dict[str, Any]]:
    """The rows of a run's progress file. A broken last line is skipped (a live run may be
    writing it); a broken line before it is an error."""
    path = os.path.join(run, "progress.jsonl")
    try:
        with open(path, encoding="utf-8") as f:
            lines = [line for line in f if line.strip()]
    except OSError as e:
        raise PlotError(f"{path}: cannot read: {e.strerror}") from None
    rows = []
    for i, line in enumerate(lines):
        try:
            row = json.loads(line)
        except json.JSONDecodeError:
            if i == len(lines) - 1:
                break
            raise PlotError(f"{path}:{i + 1}: not a JSON row") from None
        if isinstance(row, dict):
            rows.append(row)
    return rows


def _number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def seed_series(rows: list[dict[str, Any]], *, x_key: str, metric: str) -> tuple[np.ndarray, np.ndarray]:
    """(x, y) of the rows where both are numbers (the return is null until an episode ends),
    sorted by x."""
    pairs = [(r[x_key], r[metric]) for r in rows if _number(r.get(x_key)) and _number(r.get(metric))]
    pairs.sort(key=lambda p: p[0])
    return np.array([p[0] for p in pairs], float), np.array([p[1] for p in pairs], float)


def bootstrap_band(per_seed: np.ndarray, *, samples: int = BOOTSTRAP_SAMPLES,
                   seed: int = BOOTSTRAP_SEED) -> tuple[np.ndarray, np.ndarray]:
    """2.5th and 97.5th percentiles of the mean over seeds resampled with replacement;
    ``per_seed`` is (S, G). A resample is a count per seed (multinomial), so memory is
    (samples, G), not (samples, S, G)."""
    n = per_seed.shape[0]
    counts = np.random.default_rng(seed).multinomial(n, np.full(n, 1.0 / n), size=samples)  # (B, S)
    means = counts @ per_seed / n  # (B, G)
    low, high = np.percentile(means, [2.5, 97.5], axis=0)
    return low, high


def group_curve(label: str, runs: list[str], *, x: str, metric: str) -> Curve:
    x_key = X_KEYS[x]
    series = []
    for run in runs:
        rows = read_progress(run)
        if not rows:
            raise PlotError(f"{run}: progress.jsonl has no rows yet")
        if not any(metric in r for r in rows):
            raise PlotError(f"{run}: no {metric!r} in progress.jsonl")
        xs, ys = seed_series(rows, x_key=x_key, metric=metric)
        if not len(xs):
            raise PlotError(f"{run}: no value of {metric!r} yet (null, or not a number, in every row)")
        series.append((xs, ys))
    lo = max(xs[0] for xs, _ in series)
    hi = min(xs[-1] for xs, _ in series)
    if lo > hi:
        raise PlotError(f"{label}: the seeds' {X_LABELS[x]} do not overlap ({lo:g} > {hi:g}), "
                        "so there is no point where every seed has data")
    grid = np.unique(np.concatenate([xs for xs, _ in series]))
    grid = grid[(grid >= lo) & (grid <= hi)]
    per_seed = np.stack([np.interp(grid, xs, ys) for xs, ys in series])  # (S, G)
    low, high = bootstrap_band(per_seed)
    return Curve(label=label, runs=list(runs), x=grid, mean=per_seed.mean(axis=0), low=low, high=high,
                 per_seed=per_seed, seed_x=[xs for xs, _ in series], seed_y=[ys for _, ys in series])


def _check_metric(groups: list[list[str]], metric: str) -> None:
    """An unknown metric names the closest key the runs log."""
    keys: set[str] = set()
    for runs in groups:
        for run in runs:
            for row in read_progress(run):
                if metric in row:
                    return
                keys.update(k for k, v in row.items() if v is None or _number(v))
    if not keys:  # nothing logged at all: group_curve names the empty run
        return
    raise PlotError(f"unknown metric {metric!r}{closest(metric, sorted(keys))}")


def curves(groups: Sequence[str], *, x: str, metric: str, labels: Sequence[str] | None = None) -> list[Curve]:
    """One :class:`Curve` per group (a run directory or a glob of them), labelled by the
    argument unless ``labels`` are given."""
    if x not in X_KEYS:
        raise PlotError(f"x must be one of {', '.join(X_KEYS)}, got {x!r}{closest(x, X_KEYS)}")
    if labels is not None and len(labels) != len(groups):
        raise PlotError(f"{len(labels)} label(s) for {len(groups)} group(s): give one --label per group, or none")
    resolved = [resolve_group(g) for g in groups]
    _check_metric(resolved, metric)
    return [group_curve(label, runs, x=x, metric=metric)
            for label, runs in zip(labels if labels is not None else groups, resolved)]


def _save(figure: Any, out: str, *, dpi: int) -> None:
    """Write ``figure`` as a PNG at ``out`` atomically (a temporary file beside it, then
    ``os.replace``; ``open`` keeps the umask's permissions, which ``mkstemp``'s 0600 would not)."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg

    FigureCanvasAgg(figure)
    tmp = f"{out}.{os.getpid()}.tmp"
    try:
        with open(tmp, "wb") as f:
            figure.savefig(f, format="png", dpi=dpi)
        os.replace(tmp, out)
    except OSError as e:
        raise PlotError(f"cannot write {out}: {e.strerror or e}") from None
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)


def check_out(out: str) -> None:
    """Refuse an output that cannot be a PNG written there, before any work is done."""
    if not out.lower().endswith(".png"):
        raise PlotError(f"--out {out!r}: the plot is a PNG; name the file *.png")
    directory = os.path.dirname(os.path.abspath(out))
    if not os.path.isdir(directory):
        raise PlotError(f"--out {out!r}: no directory {directory}")


FIGSIZE = (8.0, 5.0)  # inches
DPI = 100


def draw_curves(found: list[Curve], out: str, *, x: str, metric: str, title: str | None = None,
                figsize: tuple[float, float] = FIGSIZE, dpi: int = DPI) -> None:
    """Each curve's mean as a line over its 95% band, one colour per group."""
    from matplotlib.figure import Figure

    figure = Figure(figsize=figsize)
    ax = figure.add_subplot()
    for curve in found:
        seeds = len(curve.runs)
        (line,) = ax.plot(curve.x, curve.mean, label=f"{curve.label} ({seeds} seed{'s' * (seeds != 1)})")
        ax.fill_between(curve.x, curve.low, curve.high, color=line.get_color(), alpha=0.25, linewidth=0)
    ax.set_xlabel(X_LABELS[x])
    ax.set_ylabel(metric)
    ax.set_title(title or f"{metric} (mean, bootstrap 95% CI over seeds)")
    ax.grid(alpha=0.3)
    ax.legend(loc="best", fontsize="small")
    figure.tight_layout()
    _save(figure, out, dpi=dpi)


@dataclasses.dataclass
class RegressionPanel:
    """One example of a regression run: its seeds' curves and its pass bar."""

    title: str
    metric: str
    threshold: float | None
    env_steps: int | None
    time_s: float | None
    seeds: list[tuple[int, list[tuple[int, float, float]]]]
    """(seed, its curve rows: (env_steps, time_s, metric value))."""


def regression_panel(title: str, target: Any, results: list[Any]) -> RegressionPanel:
    """The panel of one example: ``target`` its pass criteria (``Criteria``), ``results``
    its seeds' ``SeedResult``s (scripts/tools/regression.py), each carrying its curve."""
    return RegressionPanel(title=title, metric=target.metric, threshold=target.episode_return_mean,
                           env_steps=target.env_steps, time_s=target.time_s, seeds=[(r.seed, r.curve) for r in results])


def draw_regression(panels: list[RegressionPanel], out: str, *, dpi: int = DPI) -> None:
    """One subplot per example: each seed's metric against env steps, the pass threshold as a
    horizontal line, the env-step limit as a vertical one, and the wall limit as a dotted
    vertical line per seed that ran past it, at the env steps it had reached by then
    (interpolated between its rows)."""
    from matplotlib.figure import Figure

    columns = min(len(panels), 2) or 1
    rows = -(-len(panels) // columns) or 1
    figure = Figure(figsize=(6.0 * columns, 4.0 * rows))
    axes = figure.subplots(rows, columns, squeeze=False).ravel()
    for ax in axes[len(panels):]:
        ax.set_visible(False)
    for ax, panel in zip(axes, panels):
        for seed, rows_ in panel.seeds:
            steps, seconds = [r[0] for r in rows_], [r[1] for r in rows_]
            (line,) = ax.plot(steps, [r[2] for r in rows_], label=f"seed {seed}" + ("" if rows_ else " (no values)"))
            if panel.time_s is not None and seconds and seconds[-1] > panel.time_s:
                ax.axvline(np.interp(panel.time_s, seconds, steps), color=line.get_color(), linestyle=":", linewidth=1)
        if panel.threshold is not None:
            ax.axhline(panel.threshold, color="black", linestyle="--", linewidth=1, label=f"pass {panel.threshold:g}")
        if panel.env_steps is not None:
            ax.axvline(panel.env_steps, color="red", linestyle="--", linewidth=1,
                       label=f"limit {panel.env_steps:g} env steps")
        if panel.time_s is not None:  # a proxy artist: the dotted lines are per seed, only where one ran past it
            ax.plot([], [], color="gray", linestyle=":", linewidth=1, label=f"limit {panel.time_s:g} s (per seed)")
        if not any(rows_ for _, rows_ in panel.seeds):
            ax.text(0.5, 0.6, "no seed logged a value", transform=ax.transAxes, ha="center", va="center")
        ax.set_title(panel.title, fontsize="medium")
        ax.set_xlabel(X_LABELS["env_steps"])
        ax.set_ylabel(panel.metric)
        ax.grid(alpha=0.3)
        ax.legend(loc="best", fontsize="small")
    figure.tight_layout()
    _save(figure, out, dpi=dpi)

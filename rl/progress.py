"""A live progress bar toward a run's stop criterion, with its rate and ETA (tqdm).

Shown only when the output is a terminal; anywhere else (CI, a pipe, a file) runs print
their plain line per iteration, which logs read better.
"""

from __future__ import annotations

import math
import os
import sys
from typing import Any, TextIO


def is_terminal(stream: TextIO | None = None) -> bool:
    stream = sys.stdout if stream is None else stream
    try:
        return stream.isatty()
    except (AttributeError, ValueError):  # a closed or replaced stream
        return False


class ProgressBar:
    """One bar per run. Its total is the criterion that gives an ETA: env steps when the
    run stops at a step count, else seconds; a run that stops only at a return target
    counts iterations (no ETA can be known). The return, the best so far and the target
    ride along."""

    def __init__(self, *, env_steps: int | None = None, seconds: float | None = None, target: float | None = None,
                 metric: str = "episode_return_mean", desc: str = "", stream: TextIO | None = None) -> None:
        from tqdm import tqdm

        if env_steps:
            self.key, total, unit = "env_steps", env_steps, " steps"
        elif seconds:
            self.key, total, unit = "time_s", seconds, " s"
        else:
            self.key, total, unit = "iteration", None, " it"
        self.metric, self.target, self.done = metric, target, 0.0
        stream = sys.stdout if stream is None else stream
        self.bar = tqdm(total=total, unit=unit, unit_scale=self.key == "env_steps", desc=desc, file=stream,
                        leave=True, smoothing=0.1, **_size(stream))

    def update(self, row: dict[str, Any]) -> None:
        now = float(row.get(self.key, 0.0))
        if self.bar.total is not None:
            now = min(now, self.bar.total)
        value = row.get(self.metric)
        best = row.get("episode_return_best")
        post = {"return": _short(value)}
        if self.metric == "episode_return_mean" and best is not None:
            post["best"] = _short(best)
        if self.target is not None:
            post["target"] = _short(self.target)
        self.bar.set_postfix(post, refresh=False)
        self.bar.update(now - self.done)
        self.done = now

    def close(self) -> None:
        self.bar.close()


def _short(value: Any) -> str:
    if not isinstance(value, (int, float)) or isinstance(value, bool) or not math.isfinite(value):
        return "-"
    return f"{value:.4g}"


def count_bar(total: int, *, unit: str, desc: str, stream: TextIO | None = None) -> Any:
    """A bar over ``total`` items (a regression's seeds, a search's trials) on a terminal,
    with its rate and ETA; None elsewhere. Print through its ``write`` while it shows."""
    stream = sys.stdout if stream is None else stream
    if not is_terminal(stream):
        return None
    from tqdm import tqdm

    return tqdm(total=total, unit=unit, desc=desc, file=stream, **_size(stream))


def _size(stream: TextIO) -> dict[str, Any]:
    """tqdm's size options for ``stream``: follow the terminal, or a fixed 100 x 20 where a
    pseudo-terminal reports 0 x 0 (as ``script`` gives), on which tqdm would draw nothing."""
    try:
        size = os.get_terminal_size(stream.fileno())
    except (AttributeError, OSError, ValueError):
        return {"ncols": 100, "nrows": 20}
    return {"dynamic_ncols": True} if size.columns and size.lines else {"ncols": 100, "nrows": 20}

"""One metrics logger: the console (a line per iteration, or a live bar) and the run's loggers."""

from __future__ import annotations

import math
import os
from typing import Any

from rlfleet.rl.loggers import make_loggers


class MetricsLogger:
    """Fans each progress row out to the run's loggers (rl/loggers.py) and to the console:
    a plain line per iteration, or a live bar when one is attached (a terminal)."""

    def __init__(self, logdir: str | None, *, console: bool, log: list[str] = ("jsonl",),
                 config: dict[str, Any] | None = None) -> None:
        self.logdir, self.console = logdir, console
        self.bar: Any = None
        self.last_checkpoint: str | None = None
        self.loggers: list[Any] = []
        if logdir:
            os.makedirs(logdir, exist_ok=True)
            self.loggers = make_loggers(list(log), logdir, config or {})

    def attach_bar(self, bar: Any) -> None:
        """Show rows on ``bar`` (rl/progress.py) instead of a line each."""
        self.bar = bar

    def drop_after(self, iteration: int) -> None:
        """Forget the rows past ``iteration`` (a run killed after its last checkpoint and
        restored from it): every iteration stays in the files once."""
        for logger in self.loggers:
            if hasattr(logger, "drop_after"):
                logger.drop_after(iteration)

    def log(self, result: dict[str, Any]) -> None:
        if self.console:
            if self.bar is not None:
                self.bar.update(result)
            else:
                print(self.format_line(result), flush=True)
        for logger in self.loggers:
            logger.write(result)

    def checkpoint_saved(self, path: str) -> None:
        """The run's latest checkpoint directory: the trackers upload it when the run ends."""
        self.last_checkpoint = path

    def video(self, path: str, step: int) -> None:
        """A recorded episode, for the loggers that take videos."""
        for logger in self.loggers:
            if hasattr(logger, "video"):
                logger.video(path, step)

    @staticmethod
    def format_line(r: dict[str, Any]) -> str:
        ret = r.get("episode_return_mean", float("nan"))
        ret_s = f"{ret:9.2f}" if ret is not None and math.isfinite(ret) else "      nan"
        line = (
            f"iter {r['iteration']:5d} | env_steps {r['env_steps']:9d} | return {ret_s} | "
            f"{r.get('env_steps_per_s', 0.0):8.0f} steps/s | {r['time_s']:7.1f} s | lag {r.get('policy_lag_mean', 0.0):.1f}"
        )
        runners = sorted(k for k in r if k.startswith("env_runners/"))
        if len(runners) > 1:
            line += " | runner steps " + "/".join(str(r[k]) for k in runners)
        for key, label in (("num_env_runner_restarts", "restarts"), ("num_env_errors", "env errors")):
            if r.get(key):
                line += f" | {label} {r[key]}"
        return line

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()
            self.bar = None
        loggers, self.loggers = self.loggers, []
        for logger in loggers:
            logger.close(self.last_checkpoint)

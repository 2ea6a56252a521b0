"""One metrics logger: a console line per iteration, TensorBoard events, progress.jsonl."""

from __future__ import annotations

import json
import math
import os
from typing import Any

from rlfleet.rl.tb_events import EventWriter


def _jsonable(value: Any) -> Any:
    if isinstance(value, float) and not math.isfinite(value):
        return None  # JSON has no NaN; null reads as "no episode finished yet"
    return value


class MetricsLogger:
    def __init__(self, logdir: str | None, *, console: bool) -> None:
        self.logdir, self.console = logdir, console
        self._writer: EventWriter | None = None
        self._progress = None
        if logdir:
            os.makedirs(logdir, exist_ok=True)
            # Append: a restored run continues the same progress file.
            self._progress = open(os.path.join(logdir, "progress.jsonl"), "a", encoding="utf-8")

    def drop_after(self, iteration: int) -> None:
        """Forget the progress rows past ``iteration`` (a run killed after its last
        checkpoint and restored from it): every iteration stays in the file once."""
        if self._progress is None:
            return
        path = self._progress.name
        self._progress.close()
        with open(path, encoding="utf-8") as f:
            kept = [line for line in f if line.strip() and json.loads(line).get("iteration", 0) <= iteration]
        with open(path + ".tmp", "w", encoding="utf-8") as f:
            f.writelines(kept)
        os.replace(path + ".tmp", path)  # atomically: a crash here leaves one file or the other
        self._progress = open(path, "a", encoding="utf-8")

    def log(self, result: dict[str, Any]) -> None:
        if self.console:
            print(self.format_line(result), flush=True)
        if self._progress is not None:
            self._progress.write(json.dumps({k: _jsonable(v) for k, v in result.items()}) + "\n")
            self._progress.flush()
            self._tensorboard(result)

    def _tensorboard(self, result: dict[str, Any]) -> None:
        if self._writer is None:
            self._writer = EventWriter(self.logdir)
        self._writer.add_scalars(int(result.get("env_steps", 0)), [
            (key, value) for key, value in result.items()
            if isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)])

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
        if self._writer is not None:
            self._writer.close()
            self._writer = None
        if self._progress is not None:
            self._progress.close()
            self._progress = None

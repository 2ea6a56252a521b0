"""Experiments: a tuned-example YAML file, stop criteria, and the loop that runs them.

A tuned example (``tuned_examples/<algo>/<env>.yaml``) holds::

    algo: ppo
    env: CartPole-v1
    tags: [quick]
    config: {...}             # keys of the algorithm's config
    stop: {episode_return_mean: 475, env_steps: 200000, time_s: 300}
    pass: {episode_return_mean: 475, env_steps: 100000, time_s: 120}
    search: {lr: {loguniform: [1.0e-4, 3.0e-3]}}   # optional: scripts/tune.py's space (scripts/tools/search.py)

``stop`` ends a run; ``pass`` is what a regression run must reach, within its bounds.
"""

from __future__ import annotations

import dataclasses
import math
import os
import signal
from typing import Any

import yaml

from rlfleet.rl.checkpoint import BEST_METRIC, remove_checkpoint
from rlfleet.rl.config import ConfigError, closest

EXPERIMENT_KEYS = ("algo", "env", "tags", "config", "stop", "pass", "search", "description")
CRITERIA_KEYS = ("episode_return_mean", "env_steps", "time_s", "metric", "threshold")
RETURN = "episode_return_mean"


@dataclasses.dataclass
class Criteria:
    """Reach a target (if set), or stop at ``env_steps`` / ``time_s``. The target is
    ``episode_return_mean: X``, or any progress-row key: ``metric: <key>, threshold: X``
    (``evaluation/agents/player_1/win_rate``, which periodic evaluation writes)."""

    episode_return_mean: float | None = None
    """The target's threshold (named for the usual metric; ``threshold`` in YAML with ``metric``)."""
    env_steps: int | None = None
    time_s: float | None = None
    metric: str = RETURN

    @classmethod
    def from_dict(cls, values: dict[str, Any] | None, *, source: str) -> "Criteria":
        values = values if values is not None else {}
        if not isinstance(values, dict):
            raise ConfigError(f"{source}: expected a mapping of {', '.join(CRITERIA_KEYS)}, got {values!r}")
        values = dict(values)
        for key in values:
            if key not in CRITERIA_KEYS:
                raise ConfigError(f"{source}: unknown key {key!r}{closest(key, CRITERIA_KEYS)}")
        metric = values.pop("metric", None)
        if metric is not None:
            if not isinstance(metric, str) or not metric:
                raise ConfigError(f"{source}: metric must be a progress-row key, got {metric!r}")
            if RETURN in values:
                raise ConfigError(f"{source}: with metric, give the target as threshold, not {RETURN}")
            values[RETURN] = values.pop("threshold", None)
        elif "threshold" in values:
            raise ConfigError(f"{source}: threshold needs metric (the key it applies to); or use {RETURN}")
        out: dict[str, Any] = {"metric": metric or RETURN}
        for key, value in values.items():
            if value is None:
                continue
            if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
                raise ConfigError(f"{source}: {key} must be a finite number, got {value!r}")
            if key != RETURN and value <= 0:  # a return target may be negative
                raise ConfigError(f"{source}: {key} must be > 0, got {value!r}")
            out[key] = int(value) if key == "env_steps" else float(value)
        return cls(**out)

    def reached(self, result: dict[str, Any]) -> bool:
        """The target is met; a return target by a mean over a full window of episodes
        (``metrics_smoothing_episodes``)."""
        value = result.get(self.metric)
        target = self.episode_return_mean
        full = result.get("episode_window_full", True) if self.metric == RETURN else True
        return (target is not None and isinstance(value, (int, float)) and not math.isnan(value) and value >= target
                and full)

    def done(self, result: dict[str, Any]) -> bool:
        return (
            self.reached(result)
            or (self.env_steps is not None and result["env_steps"] >= self.env_steps)
            or (self.time_s is not None and result["time_s"] >= self.time_s)
        )


@dataclasses.dataclass
class Experiment:
    algo: str
    env: str
    config: dict[str, Any]
    stop: Criteria
    pass_criteria: Criteria
    tags: list[str]
    path: str
    search: dict[str, Any] | None = None


def load_experiment(path: str) -> Experiment:
    """Read a tuned example; an unknown key or a missing part names the file and the key."""
    try:
        with open(path, encoding="utf-8") as f:
            data = yaml.safe_load(f)
    except OSError as e:
        raise ConfigError(f"{path}: cannot read: {e.strerror}") from None
    except yaml.YAMLError as e:
        raise ConfigError(f"{path}: not valid YAML: {str(e).splitlines()[0]}") from None
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: expected a mapping with keys {', '.join(EXPERIMENT_KEYS)}")
    for key in data:
        if key not in EXPERIMENT_KEYS:
            raise ConfigError(f"{path}: unknown key {key!r}{closest(key, EXPERIMENT_KEYS)}")
    for key in ("algo", "env"):
        if key not in data:
            raise ConfigError(f"{path}: missing key {key!r}")
        if not isinstance(data[key], str):
            raise ConfigError(f"{path}: {key} must be a name, got {data[key]!r}")
    for key, kind, label in (("config", dict, "a mapping of config keys"), ("tags", list, "a list")):
        if data.get(key) is not None and not isinstance(data[key], kind):
            raise ConfigError(f"{path}: {key!r} must be {label}, got {type(data[key]).__name__} {data[key]!r}")
    return Experiment(
        algo=data["algo"],
        env=data["env"],
        config=dict(data.get("config") or {}),
        stop=Criteria.from_dict(data.get("stop"), source=f"{path}: stop"),
        pass_criteria=Criteria.from_dict(data.get("pass"), source=f"{path}: pass"),
        tags=list(data.get("tags") or []),
        path=path,
        search=data.get("search"),
    )


def run_until(
    algo: Any,
    stop: Criteria,
    *,
    checkpoint_dir: str | None = None,
    checkpoint_every: int = 0,
) -> dict[str, Any]:
    """Call ``algo.train()`` until ``stop`` holds; checkpoint every N iterations and at the
    end (also on Ctrl-C or SIGTERM, so an interrupted run can be resumed).

    ``checkpoint_dir`` (``LOGDIR/checkpoint``) always holds the latest checkpoint. Beside it,
    with the config's ``keep_checkpoints: N``, ``checkpoints/iteration-<k>/`` keeps the last N
    written, and with ``checkpoint_best``, ``checkpoint_best/`` is rewritten at each iteration
    whose ``evaluation/episode_return_mean`` beats the best so far (kept across restores)."""
    result: dict[str, Any] = {}
    interrupted = False
    first_iteration = algo.iteration
    checkpoints = _Checkpoints(algo, checkpoint_dir) if checkpoint_dir else None
    previous = signal.signal(signal.SIGTERM, _raise_keyboard_interrupt)
    try:
        while not result or not stop.done(result):
            result = algo.train()
            if checkpoints is not None:
                checkpoints.after(result, due=bool(checkpoint_every) and result["iteration"] % checkpoint_every == 0)
    except KeyboardInterrupt:
        interrupted = True
    finally:
        signal.signal(signal.SIGTERM, previous)
        # Ask the algorithm, not the last result: Ctrl-C can land after an iteration finished
        # (its line printed) but before train() returned it.
        trained = algo.checkpointed_progress()["counters"]["iteration"] > first_iteration
        if checkpoints is not None and trained:
            checkpoints.write()
    summary = dict(result)
    # what the checkpoint holds: the last finished iteration, also when one was cut
    counters = algo.checkpointed_progress()["counters"]
    summary.update(iteration=counters["iteration"], env_steps=counters["env_steps"])
    summary["reached"] = stop.reached(result) if result else False
    summary["interrupted"] = interrupted
    summary["checkpoint"] = checkpoint_dir if checkpoint_dir and trained else None
    return summary


class _Checkpoints:
    """Where run_until writes checkpoints: the latest, the last ``keep_checkpoints`` and the
    best evaluation's, each written from one ``get_state``."""

    def __init__(self, algo: Any, latest: str) -> None:
        root = os.path.dirname(os.path.abspath(latest))
        self.algo, self.latest = algo, latest
        self.keep = algo.config.keep_checkpoints
        self.history = os.path.join(root, "checkpoints")
        self.best_dir = os.path.join(root, "checkpoint_best") if algo.config.checkpoint_best else None
        self.best = float(algo.checkpointed_progress()["counters"].get("best_evaluation_return", math.nan))

    def after(self, result: dict[str, Any], *, due: bool) -> None:
        """After an iteration: the latest (and a kept copy) when ``due``, the best when it improved."""
        value = result.get(BEST_METRIC)
        improved = (self.best_dir is not None and isinstance(value, (int, float)) and not math.isnan(value)
                    and not value <= self.best)  # (a NaN best compares False: the first evaluation sets it)
        if improved:
            self.best = self.algo.best_evaluation_return = float(value)  # held by every checkpoint from now on
        if due:
            self.write(also_best=improved)
        elif improved:
            self.algo.save(self.best_dir)

    def write(self, *, also_best: bool = False) -> None:
        """The latest checkpoint, its kept copy, and the best one too when ``also_best``."""
        copies = []
        iteration = self.algo.checkpointed_progress()["counters"]["iteration"]
        if self.keep:
            copies.append(os.path.join(self.history, f"iteration-{iteration}"))
        if also_best:
            copies.append(self.best_dir)
        self.algo.save(self.latest, copies=copies)
        if self.keep:
            kept = {int(name.split("-", 1)[1]): name for name in os.listdir(self.history)
                    if name.startswith("iteration-") and name.split("-", 1)[1].isdigit()}
            # the newest N, and none past this iteration (left by a run this one was restored before)
            for k in [k for k in kept if k > iteration] + sorted(k for k in kept if k <= iteration)[:-self.keep]:
                remove_checkpoint(os.path.join(self.history, kept[k]))


def _raise_keyboard_interrupt(signum: int, frame: Any) -> None:
    raise KeyboardInterrupt

"""Hooks into a run, and metrics of the user's own from episodes.

A :class:`Callbacks` subclass overrides the hooks it needs (SB3's callbacks, RLlib's
``RLlibCallback``). The episode hooks run where episodes are sampled: in each env runner,
which is a Ray actor with ``num_env_runners > 0``, so a callback object lives once per
runner, and what it wants the driver to see goes into ``episode.metrics``. The driver
gathers those per-episode values from every runner and reports each key as
``custom/<key>``, the mean over the last ``metrics_smoothing_episodes`` episodes that set
it. The other hooks run in the driver's process.

``info_metrics: {success: last, distance: sum}`` is the same path without code: the env's
``info`` values of a key, aggregated per episode.

Given in YAML as ``callbacks: [mypkg.hooks:CountEpisodes]``; the module must import where
the runners run (``--import mypkg.hooks`` ships it to Ray workers).
"""

from __future__ import annotations

import dataclasses
import importlib
import math
from typing import Any

from rlfleet.rl.config_values import ConfigError, closest

AGGREGATIONS = ("last", "sum", "mean", "max", "min")
"""How ``info_metrics`` folds a key's values over one episode's steps."""
CUSTOM = "custom/"
"""The prefix of per-episode metrics in progress rows."""


@dataclasses.dataclass
class Episode:
    """One sub-env's episode as the episode hooks see it."""

    env_index: int
    """Which sub-env of the runner's vector env."""
    runner_index: int
    length: int = 0
    """Steps taken so far."""
    total_reward: float = 0.0
    reward: float = 0.0
    """The last step's reward."""
    info: dict = dataclasses.field(default_factory=dict)
    """The last step's (or, before the first step, reset's) ``info``."""
    metrics: dict[str, float] = dataclasses.field(default_factory=dict)
    """What the driver reports as ``custom/<key>`` once the episode ends."""
    user_data: dict[str, Any] = dataclasses.field(default_factory=dict)
    """Free for the hooks to keep their own state in, over the episode."""


class Callbacks:
    """Override what you need; every hook does nothing by default. A hook's keyword
    arguments are the ones shown: more may be added later, so take ``**_`` if you like."""

    def on_episode_start(self, *, episode: Episode) -> None:
        """A sub-env began an episode (runner side)."""

    def on_episode_step(self, *, episode: Episode) -> None:
        """One step of the episode was taken (runner side; costs a Python call per env step)."""

    def on_episode_end(self, *, episode: Episode) -> None:
        """The episode ended (runner side): set ``episode.metrics[key]`` here."""

    def on_train_result(self, *, algorithm: Any, result: dict[str, Any]) -> None:
        """An iteration finished (driver side), before its row is logged: keys added to
        ``result`` go to every logger."""

    def on_checkpoint(self, *, algorithm: Any, path: str) -> None:
        """A checkpoint was written into directory ``path`` (driver side)."""

    def on_run_end(self, *, algorithm: Any, result: dict[str, Any]) -> None:
        """The run stopped (its stop criterion, an interrupt or a failure; driver side):
        ``result`` is the last iteration's row (empty if none finished)."""


def check_callbacks(specs: list) -> None:
    """Each entry a Callbacks subclass or a ``module:Class`` name (imported later, where
    it runs: the user's module may register itself only in the runner's process)."""
    for spec in specs:
        if isinstance(spec, str):
            module, _, cls = spec.partition(":")
            if not module or not cls:
                raise ConfigError(f"callbacks: {spec!r} must be 'module:Class' (e.g. mypkg.hooks:CountEpisodes)")
        elif not (isinstance(spec, type) and issubclass(spec, Callbacks)):
            raise ConfigError(f"callbacks: {spec!r} is not a subclass of rlfleet.rl.callbacks.Callbacks "
                              "(give the class, or 'module:Class')")


def check_info_metrics(metrics: dict) -> None:
    for key, how in metrics.items():
        if not isinstance(key, str) or not key:
            raise ConfigError(f"info_metrics: key {key!r} must be a non-empty string (an env info key)")
        if how not in AGGREGATIONS:
            raise ConfigError(f"info_metrics: {key}: {how!r} is not an aggregation; use one of "
                              f"{', '.join(AGGREGATIONS)}{closest(str(how), AGGREGATIONS)}")


def callback_classes(specs: list) -> list[type[Callbacks]]:
    """The classes ``specs`` name; a name that does not import, or names no Callbacks
    subclass, is one line (ConfigError)."""
    out = []
    for spec in specs:
        cls = spec
        if isinstance(spec, str):
            module, _, name = spec.partition(":")
            try:
                cls = getattr(importlib.import_module(module), name)
            except ModuleNotFoundError as e:
                raise ConfigError(f"callbacks: {spec!r}: {e} (ship your module with --import)") from None
            except AttributeError:
                raise ConfigError(f"callbacks: {spec!r}: module {module!r} has no {name!r}") from None
        check_callbacks([cls])
        out.append(cls)
    return out


def load_callbacks(specs: list) -> list[Callbacks]:
    """One instance of each class in ``specs`` (:func:`callback_classes`)."""
    out = []
    for cls in callback_classes(specs):
        try:
            out.append(cls())
        except TypeError as e:
            raise ConfigError(f"callbacks: {cls.__qualname__} cannot be built without arguments: {e}") from None
    return out


def overrides(callbacks: list[Callbacks], hook: str) -> list[Callbacks]:
    """The callbacks whose class overrides ``hook``: only those are called, so hooks that
    nobody wrote cost nothing (``on_episode_step`` runs per env step)."""
    return [c for c in callbacks if getattr(type(c), hook) is not getattr(Callbacks, hook)]


def _number(value: Any) -> float | None:
    try:
        number = float(value)
    except (TypeError, ValueError):
        return None
    return number if math.isfinite(number) else None


class EpisodeHooks:
    """A runner's per-episode bookkeeping: the episode hooks of its callbacks and the
    ``info_metrics``, for ``num_envs`` sub-envs. Built only when there is something to do;
    the runner then calls :meth:`step` once per vector step."""

    def __init__(self, callbacks: list[Callbacks], info_metrics: dict[str, str], *, num_envs: int,
                 runner_index: int) -> None:
        self.info_metrics = dict(info_metrics)
        self.starts = overrides(callbacks, "on_episode_start")
        self.steps = overrides(callbacks, "on_episode_step")
        self.ends = overrides(callbacks, "on_episode_end")
        self.runner_index = runner_index
        self.episodes = [self._start(i, {}) for i in range(num_envs)]
        self._sums: list[dict[str, list[float]]] = [{} for _ in range(num_envs)]  # key -> [total, count]

    @staticmethod
    def wanted(callbacks: list[Callbacks], info_metrics: dict[str, str]) -> bool:
        return bool(info_metrics) or any(overrides(callbacks, h) for h in ("on_episode_start", "on_episode_step",
                                                                             "on_episode_end"))

    def _start(self, i: int, info: dict) -> Episode:
        episode = Episode(env_index=i, runner_index=self.runner_index, info=info)
        for c in self.starts:
            c.on_episode_start(episode=episode)
        return episode

    def step(self, i: int, reward: float, info: dict) -> None:
        """Sub-env ``i`` took a step with ``reward`` and ``info``."""
        episode = self.episodes[i]
        episode.length += 1
        episode.reward = float(reward)
        episode.total_reward += episode.reward
        episode.info = info
        for key, how in self.info_metrics.items():
            value = _number(info[key]) if key in info else None
            if value is None:
                continue
            if how == "last":
                episode.metrics[key] = value
            elif how in ("max", "min"):
                old = episode.metrics.get(key)
                episode.metrics[key] = value if old is None else (max if how == "max" else min)(old, value)
            else:  # sum, mean
                total = self._sums[i].setdefault(key, [0.0, 0])
                total[0] += value
                total[1] += 1
                episode.metrics[key] = total[0] if how == "sum" else total[0] / total[1]
        for c in self.steps:
            c.on_episode_step(episode=episode)

    def end(self, i: int) -> dict[str, float]:
        """Sub-env ``i``'s episode ended: its metrics; the next episode starts there."""
        episode = self.episodes[i]
        for c in self.ends:
            c.on_episode_end(episode=episode)
        self._sums[i] = {}
        self.episodes[i] = self._start(i, {})
        return {k: float(v) for k, v in episode.metrics.items() if _number(v) is not None}

"""Observation connectors that run beside the env runner; their state is synced and
checkpointed."""

from __future__ import annotations

from typing import Any

import gymnasium as gym
import numpy as np
import tree
from gymnasium import spaces

from rlfleet.rl.core import ACTION_MASK
from rlfleet.rl.spaces import leaf_spaces, space_structure


class RunningStats:
    """Mean and variance over a stream of batches (Chan et al.'s parallel update)."""

    def __init__(self, shape: tuple[int, ...]) -> None:
        self.count = 0.0
        self.mean = np.zeros(shape, np.float64)
        self.m2 = np.zeros(shape, np.float64)

    def update(self, x: np.ndarray) -> None:
        self.merge(float(len(x)), x.mean(0), x.var(0) * len(x))

    def merge(self, count: float, mean: np.ndarray, m2: np.ndarray) -> None:
        if count == 0:
            return
        total = self.count + count
        delta = mean - self.mean
        self.mean = self.mean + delta * (count / total)
        self.m2 = self.m2 + m2 + delta**2 * (self.count * count / total)
        self.count = total

    @property
    def std(self) -> np.ndarray:
        return np.sqrt(self.m2 / max(self.count, 1.0)) + 1e-8

    def state(self) -> dict[str, Any]:
        return {"count": self.count, "mean": self.mean.copy(), "m2": self.m2.copy()}

    def load(self, state: dict[str, Any]) -> None:
        self.count = float(state["count"])
        self.mean = np.asarray(state["mean"], np.float64).copy()
        self.m2 = np.asarray(state["m2"], np.float64).copy()


class MeanStdFilter:
    """Normalises float Box leaves of the observation to zero mean, unit variance, clipped.

    With several runners each one sees only its own data, so a runner keeps the shared
    statistics (``base``) and what it saw since the last sync (``delta``) apart; the driver
    merges every runner's delta into the shared state and sends it back (as RLlib's
    MeanStdFilter does), so all runners normalise alike.
    """

    def __init__(self, observation_space: gym.Space, clip: float = 10.0) -> None:
        self.clip = clip
        # Float Box leaves are normalised; an action mask never is, whatever its dtype.
        self.slots = [
            isinstance(s, spaces.Box) and np.issubdtype(s.dtype, np.floating) and path != (ACTION_MASK,)
            for path, s in tree.flatten_with_path(space_structure(observation_space))
        ]
        shapes = [s.shape for s in leaf_spaces(observation_space)]
        self.base = [RunningStats(sh) if ok else None for sh, ok in zip(shapes, self.slots)]
        self.delta = [RunningStats(sh) if ok else None for sh, ok in zip(shapes, self.slots)]

    def __call__(self, obs: Any, update: bool = True) -> Any:
        """Normalise a batch of observations (B, ...); ``update`` folds them into the stats."""
        leaves = tree.flatten(obs)
        out = []
        for x, base, delta in zip(leaves, self.base, self.delta):
            if base is None:
                out.append(x)
                continue
            if update:
                delta.update(x)
            mean, std = self._combined(base, delta)
            out.append(np.clip((x - mean) / std, -self.clip, self.clip).astype(np.float32))
        return tree.unflatten_as(obs, out)

    def statistics(self) -> list[tuple[np.ndarray, np.ndarray] | None]:
        """(mean, std) of every normalised leaf as this filter applies them now; None for
        leaves it leaves alone (what an exported model bakes in)."""
        return [self._combined(b, d) if b is not None else None for b, d in zip(self.base, self.delta)]

    @staticmethod
    def _combined(base: RunningStats, delta: RunningStats) -> tuple[np.ndarray, np.ndarray]:
        both = RunningStats(base.mean.shape)
        both.load(base.state())
        both.merge(delta.count, delta.mean, delta.m2)
        return both.mean, both.std

    def pop_delta(self) -> list[dict[str, Any] | None]:
        """What this runner saw since the last sync; resets it."""
        out = [d.state() if d is not None else None for d in self.delta]
        for d in self.delta:
            if d is not None:
                d.load(RunningStats(d.mean.shape).state())
        return out

    def merge_deltas(self, deltas: list[list[dict[str, Any] | None]]) -> None:
        """Fold runners' deltas into the shared state (on the driver's copy)."""
        for runner_delta in deltas:
            for base, d in zip(self.base, runner_delta):
                if base is not None and d is not None:
                    base.merge(d["count"], d["mean"], d["m2"])

    def get_state(self) -> list[dict[str, Any] | None]:
        return [b.state() if b is not None else None for b in self.base]

    def set_state(self, state: list[dict[str, Any] | None]) -> None:
        for base, s in zip(self.base, state):
            if base is not None and s is not None:
                base.load(s)


class RewardNormalizer:
    """Divides rewards by the running standard deviation of the discounted return and
    clips them to +-``clip`` (what SB3's VecNormalize and CleanRL's NormalizeReward do).

    It runs on the driver over the fragments as they arrive, so asynchronous algorithms
    and any number of runners share one scale without a sync. Each column (runner, env)
    carries its discounted return from one fragment into the next, and an episode's end
    resets it. Episode returns in the metrics are the env's own: the runners count them
    before this scaling.
    """

    def __init__(self, gamma: float, clip: float = 10.0) -> None:
        self.gamma, self.clip = gamma, clip
        self.stats = RunningStats(())
        self.returns: dict[int, np.ndarray] = {}  # runner index -> (B,) discounted returns so far

    def __call__(self, rewards: np.ndarray, dones: np.ndarray, runner_index: int) -> np.ndarray:
        """Rewards (T, B) of one runner's fragment, with its episode ends (T, B), scaled."""
        T, B = rewards.shape
        ret = self.returns.get(runner_index)
        if ret is None or len(ret) != B:
            ret = np.zeros(B, np.float64)
        seen = np.empty((T, B), np.float64)
        for t in range(T):
            ret = ret * self.gamma + rewards[t]
            seen[t] = ret
            ret = np.where(dones[t], 0.0, ret)
        self.returns[runner_index] = ret
        self.stats.update(seen.reshape(-1))
        return np.clip(rewards / self.stats.std, -self.clip, self.clip).astype(np.float32)

    def get_state(self) -> dict[str, Any]:
        return {"count": self.stats.count, "mean": float(self.stats.mean), "m2": float(self.stats.m2),
                "returns": {i: r.tolist() for i, r in self.returns.items()}}

    def set_state(self, state: dict[str, Any]) -> None:
        self.stats.load(state)
        self.returns = {int(i): np.asarray(r, np.float64) for i, r in state["returns"].items()}

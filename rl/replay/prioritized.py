"""Proportional prioritised replay on top of the uniform buffer's storage."""

from __future__ import annotations

import gymnasium as gym
import numpy as np

from rlfleet.rl.replay.buffer import ReplayBuffer
from rlfleet.rl.replay.segment_tree import MinTree, SumTree


class PrioritizedReplayBuffer(ReplayBuffer):
    """Proportional prioritised replay (Schaul et al. 2016, "Prioritized Experience Replay").

    P(i) = p_i^alpha / sum_j p_j^alpha over sampleable slots (others hold 0 in the sum
    tree, so they are never drawn); a transition enters with the largest priority seen so
    far when it becomes sampleable, so each is replayed soon after it arrives. Importance weights
    w_i = (N P(i))^-beta / max_j w_j correct the bias of non-uniform replay; ``beta`` is
    annealed towards 1 by the caller. Sampling is stratified: one draw per equal slice of
    the total priority (the paper's Appendix B.2.1).
    """

    def __init__(
        self,
        capacity: int,
        observation_space: gym.Space,
        action_space: gym.Space,
        *,
        num_streams: int,
        n_step: int = 1,
        gamma: float = 0.99,
        frame_stack: int = 1,
        seed: int = 0,
        alpha: float = 0.6,
        beta: float = 0.4,
        eps: float = 1e-6,
    ) -> None:
        super().__init__(capacity, observation_space, action_space, num_streams=num_streams, n_step=n_step,
                         gamma=gamma, frame_stack=frame_stack, seed=seed)
        if alpha < 0:
            raise ValueError(f"alpha must be >= 0, got {alpha}")
        if eps <= 0:
            raise ValueError(f"eps must be > 0 (a zero priority is never replayed again), got {eps}")
        self.alpha = float(alpha)  # fixed: the trees hold p^alpha
        self.beta = beta
        self.eps = float(eps)
        self._priority = np.ones(self.capacity, np.float64)  # p_i, before the exponent alpha
        self._max_priority = 1.0
        self._sum = SumTree(self.capacity)
        self._min = MinTree(self.capacity)

    @property
    def beta(self) -> float:
        return self._beta

    @beta.setter
    def beta(self, value: float) -> None:
        if value < 0:
            raise ValueError(f"beta must be >= 0, got {value}")
        self._beta = float(value)

    def update_priorities(self, indices: np.ndarray, td_errors: np.ndarray) -> None:
        """Set p = |td| + eps for the sampled ``indices``.

        Ids of slots overwritten (or no longer sampleable) since they were sampled are
        ignored: their priority would belong to another transition.
        """
        indices = np.asarray(indices, np.int64).ravel()
        td = np.asarray(td_errors, np.float64).ravel()
        if indices.shape != td.shape:
            raise ValueError(f"{indices.size} indices but {td.size} td_errors")
        if not np.all(np.isfinite(td)):
            raise ValueError("td_errors contain NaN or inf; a non-finite priority would corrupt the sum tree")
        slots, steps = indices % self.capacity, indices // self.capacity
        live = (self._step_of(slots) == steps) & self._valid[slots]
        slots, p = slots[live], np.abs(td[live]) + self.eps
        # For a slot sampled twice, the last td error wins (as in SumTree.update).
        slots, last = np.unique(slots[::-1], return_index=True)
        p = p[::-1][last]
        if slots.size == 0:
            return
        self._priority[slots] = p
        self._max_priority = max(self._max_priority, float(p.max()))
        self._sum.update(slots, p**self.alpha)
        self._min.update(slots, p**self.alpha)

    def _draw(self, batch_size: int) -> np.ndarray:
        return self._sum.sample(batch_size, self._rng)

    def _weights(self, slots: np.ndarray) -> np.ndarray:
        # (N P_i)^-beta / max_j (N P_j)^-beta = (p_i^alpha / min_j p_j^alpha)^-beta: N and
        # the total cancel, and the largest weight belongs to the smallest priority.
        return ((self._sum[slots] / self._min.min) ** -self.beta).astype(np.float32)

    def _set_valid(self, slots: np.ndarray, valid: np.ndarray) -> None:
        # A transition enters with the largest priority seen when it becomes sampleable
        # (not when written: its window may complete after updates raised the max).
        entering = valid & ~self._valid[slots]
        self._priority[slots[entering]] = self._max_priority
        super()._set_valid(slots, valid)
        p_alpha = self._priority[slots] ** self.alpha
        self._sum.update(slots, np.where(valid, p_alpha, 0.0))
        self._min.update(slots, np.where(valid, p_alpha, np.inf))

    def _arrays(self) -> list[np.ndarray]:
        return [*super()._arrays(), self._priority, self._sum.nodes, self._min.nodes]

    def _scalars(self) -> dict[str, float]:
        return {"max_priority": self._max_priority, "beta": self.beta}

    def _set_scalars(self, scalars: dict[str, float]) -> None:
        self._max_priority, self.beta = float(scalars["max_priority"]), float(scalars["beta"])

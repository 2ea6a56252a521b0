"""Segment trees over priorities for prioritised replay (Schaul et al. 2016).

Leaves hold one priority per buffer slot; each inner node holds the sum (or min) of its
children, so the total is at the root and a proportional sample is one walk from the
root: O(log n) per update and per sample. Updates and samples are vectorised over a
whole batch of indices: one numpy pass per tree level instead of a Python loop per item.
"""

from __future__ import annotations

import numpy as np


class _SegmentTree:
    def __init__(self, capacity: int, neutral: float) -> None:
        if capacity <= 0:
            raise ValueError(f"capacity must be > 0, got {capacity}")
        self.capacity = capacity
        self.size = 1 << (capacity - 1).bit_length()  # leaves, a power of two
        self.neutral = neutral
        self.nodes = np.full(2 * self.size, neutral, np.float64)  # nodes[1] is the root

    def _combine(self, left: np.ndarray, right: np.ndarray) -> np.ndarray:
        raise NotImplementedError

    def update(self, indices: np.ndarray, values: np.ndarray) -> None:
        """Set the leaves ``indices`` to ``values`` (the last wins for repeated indices)."""
        indices = np.asarray(indices, np.int64)
        if indices.size and (indices.min() < 0 or indices.max() >= self.capacity):
            raise IndexError(f"index out of [0, {self.capacity}): {indices.min()}..{indices.max()}")
        pos = indices + self.size
        self.nodes[pos] = values
        pos = np.unique(pos // 2)
        while pos.size and pos[0] >= 1:
            self.nodes[pos] = self._combine(self.nodes[2 * pos], self.nodes[2 * pos + 1])
            if pos[0] == 1:
                break
            pos = np.unique(pos // 2)

    def __getitem__(self, indices: np.ndarray) -> np.ndarray:
        return self.nodes[np.asarray(indices, np.int64) + self.size]


class SumTree(_SegmentTree):
    def __init__(self, capacity: int) -> None:
        super().__init__(capacity, 0.0)

    def _combine(self, left: np.ndarray, right: np.ndarray) -> np.ndarray:
        return left + right

    @property
    def total(self) -> float:
        return float(self.nodes[1])

    def find(self, prefix_sums: np.ndarray) -> np.ndarray:
        """For each u in [0, total), the leaf i with sum(p[:i]) <= u < sum(p[:i+1]).

        A walk never enters a subtree of zero sum, so float round-off near the edges can
        only move a draw to a neighbouring leaf that has priority, never onto an empty one.
        """
        u = np.asarray(prefix_sums, np.float64).copy()
        idx = np.ones(u.shape, np.int64)
        for _ in range(self.size.bit_length() - 1):  # one step per tree level
            left = 2 * idx
            go_right = (u >= self.nodes[left]) & (self.nodes[left + 1] > 0)
            u -= np.where(go_right, self.nodes[left], 0.0)
            idx = left + go_right
        return idx - self.size

    def sample(self, n: int, rng: np.random.Generator) -> np.ndarray:
        """``n`` leaves drawn with probability proportional to their values, stratified:
        one draw per equal slice of the total (lower variance than n independent draws)."""
        if self.total <= 0:
            raise ValueError("cannot sample from a tree whose priorities sum to 0")
        bounds = np.linspace(0.0, self.total, n + 1)
        return self.find(rng.uniform(bounds[:-1], bounds[1:]))


class MinTree(_SegmentTree):
    def __init__(self, capacity: int) -> None:
        super().__init__(capacity, np.inf)

    def _combine(self, left: np.ndarray, right: np.ndarray) -> np.ndarray:
        return np.minimum(left, right)

    @property
    def min(self) -> float:
        return float(self.nodes[1])

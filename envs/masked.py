"""Envs with illegal actions, in the action-mask form every algorithm honours: the
observation is a Dict whose ``action_mask`` entry has a 1 for each legal action (for a
MultiDiscrete action space, the sub-actions' masks one after the other), the convention
PettingZoo uses. Both envs raise on an illegal action, so a run that finishes without an
error never sent one.
"""

from __future__ import annotations

from collections import deque
from typing import Any

import gymnasium as gym
import numpy as np
from gymnasium import spaces


class IllegalActionError(RuntimeError):
    """The policy chose an action the mask had marked illegal."""


class MaskedChoiceEnv(gym.Env):
    """Each step a random set of legal actions (sometimes exactly one) and a target among
    them, shown one-hot in ``observation``; reward = the fraction of sub-actions that hit
    their target. Episodes terminate with probability 0.05 a step and are truncated at
    ``max_steps``, so both ends of an episode carry masks."""

    def __init__(self, nvec: tuple[int, ...] | int = 6, max_steps: int = 20, p_legal: float = 0.4) -> None:
        self.discrete = isinstance(nvec, int)
        self.nvec = np.array([nvec] if self.discrete else list(nvec), np.int64)
        self.max_steps, self.p_legal = max_steps, p_legal
        size = int(self.nvec.sum())
        self.offsets = np.concatenate([[0], np.cumsum(self.nvec)[:-1]])
        self.observation_space = spaces.Dict({
            "observation": spaces.Box(0.0, 1.0, (size,), np.float32),
            "action_mask": spaces.Box(0, 1, (size,), np.int8),
        })
        self.action_space = spaces.Discrete(int(nvec)) if self.discrete else spaces.MultiDiscrete(self.nvec)

    def reset(self, *, seed: int | None = None, options: dict | None = None) -> tuple[dict, dict]:
        super().reset(seed=seed)
        self.t = 0
        return self._draw(), {}

    def _draw(self) -> dict[str, np.ndarray]:
        rng = self.np_random
        mask = np.zeros(int(self.nvec.sum()), np.int8)
        target = np.zeros_like(mask, dtype=np.float32)
        self.legal, self.targets = [], []
        for lo, n in zip(self.offsets, self.nvec):
            legal = np.flatnonzero(rng.random(n) < self.p_legal)
            if len(legal) == 0 or rng.random() < 0.2:  # often exactly one legal action
                legal = rng.choice(n, 1)
            mask[lo + legal] = 1
            self.legal.append(set(legal.tolist()))
            self.targets.append(int(rng.choice(legal)))
            target[lo + self.targets[-1]] = 1.0
        return {"observation": target, "action_mask": mask}

    def step(self, action: Any) -> tuple[dict, float, bool, bool, dict]:
        actions = [int(action)] if self.discrete else [int(a) for a in action]
        for k, a in enumerate(actions):
            if a not in self.legal[k]:
                raise IllegalActionError(f"illegal action {a} (sub-action {k}); legal: {sorted(self.legal[k])}")
        reward = float(np.mean([a == t for a, t in zip(actions, self.targets)]))
        self.t += 1
        terminated = bool(self.np_random.random() < 0.05)
        return self._draw(), reward, terminated, self.t >= self.max_steps, {}


MAZE = (
    "...#...",
    ".#.#.#.",
    ".#...#.",
    ".#####.",
    "...#...",
    "##.#.##",
    "......G",
)
"""The default maze of :class:`MaskedMazeEnv`: ``#`` a wall, ``G`` the goal."""


class MaskedMazeEnv(gym.Env):
    """A maze walked by jumping to a cell: the action is a cell index (one of rows x cols),
    and only the free cells next to the agent (up, down, left, right) are legal, so 1 to 4
    of the 49 actions are legal in each state and the rest raise. Reward 1 at the goal and
    -0.02 for every other step; episodes start on a random free cell and are truncated at
    ``max_steps``. The observation is the agent's cell, one-hot, and the action mask.

    With ``mask=False`` the observation is the one-hot cell alone and an illegal move
    leaves the agent where it is, at the cost of a step: the same task without masking,
    for comparison. :meth:`optimal_return` gives the expected return of the shortest
    paths, for a pass criterion; random legal moves return about -1.06."""

    STEP_REWARD = -0.02

    def __init__(self, maze: tuple[str, ...] | list[str] = MAZE, max_steps: int = 100, mask: bool = True) -> None:
        self.grid = [list(row) for row in maze]
        self.rows, self.cols = len(maze), len(maze[0])
        self.max_steps = max_steps
        cells = self.rows * self.cols
        self.free = [r * self.cols + c for r in range(self.rows) for c in range(self.cols) if maze[r][c] != "#"]
        self.goal = next(r * self.cols + c for r in range(self.rows) for c in range(self.cols) if maze[r][c] == "G")
        self.neighbours = {cell: self._neighbours(cell) for cell in self.free}
        self.mask = mask
        onehot = spaces.Box(0.0, 1.0, (cells,), np.float32)
        self.observation_space = (spaces.Dict({"observation": onehot, "action_mask": spaces.Box(0, 1, (cells,), np.int8)})
                                  if mask else onehot)
        self.action_space = spaces.Discrete(cells)

    def _neighbours(self, cell: int) -> list[int]:
        r, c = divmod(cell, self.cols)
        near = [(r - 1, c), (r + 1, c), (r, c - 1), (r, c + 1)]
        return [y * self.cols + x for y, x in near
                if 0 <= y < self.rows and 0 <= x < self.cols and self.grid[y][x] != "#"]

    def _obs(self) -> Any:
        cells = self.rows * self.cols
        onehot, mask = np.zeros(cells, np.float32), np.zeros(cells, np.int8)
        onehot[self.pos] = 1.0
        if not self.mask:
            return onehot
        mask[self.neighbours[self.pos]] = 1
        return {"observation": onehot, "action_mask": mask}

    def reset(self, *, seed: int | None = None, options: dict | None = None) -> tuple[dict, dict]:
        super().reset(seed=seed)
        starts = [cell for cell in self.free if cell != self.goal]
        self.pos, self.t = starts[int(self.np_random.integers(len(starts)))], 0
        return self._obs(), {}

    def step(self, action: Any) -> tuple[dict, float, bool, bool, dict]:
        action = int(action)
        if action in self.neighbours[self.pos]:
            self.pos = action
        elif self.mask:
            raise IllegalActionError(f"illegal move from cell {self.pos} to cell {action}; "
                                     f"legal: {self.neighbours[self.pos]}")
        self.t += 1
        terminated = self.pos == self.goal
        reward = 1.0 if terminated else self.STEP_REWARD
        return self._obs(), reward, terminated, self.t >= self.max_steps, {}

    def optimal_return(self) -> float:
        """The expected return over random starts when every move is on a shortest path."""
        dist = {self.goal: 0}
        queue = deque([self.goal])
        while queue:
            cell = queue.popleft()
            for nxt in self.neighbours[cell]:
                if nxt not in dist:
                    dist[nxt] = dist[cell] + 1
                    queue.append(nxt)
        starts = [cell for cell in self.free if cell != self.goal]
        return float(np.mean([1.0 + self.STEP_REWARD * (dist[s] - 1) for s in starts]))

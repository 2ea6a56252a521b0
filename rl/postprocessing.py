"""Advantage estimation shared by the on-policy algorithms."""

from __future__ import annotations

import numpy as np


def compute_gae(
    rewards: np.ndarray,
    values: np.ndarray,
    next_values: np.ndarray,
    terminated: np.ndarray,
    truncated: np.ndarray,
    *,
    gamma: float,
    lam: float,
) -> tuple[np.ndarray, np.ndarray]:
    """Generalised advantage estimation (Schulman et al. 2016), time-major (T, B).

    delta_t = r_t + gamma * V(s_{t+1}) * (1 - terminated_t) - V(s_t)
    A_t     = delta_t + gamma * lam * (1 - done_t) * A_{t+1},  done = terminated | truncated

    Bootstrap on truncation, not on termination: a time limit says nothing about the value
    of the state it cut, so ``next_values`` carries V(final observation) there. Either kind
    of episode end stops the recursion, so no advantage leaks across episodes of one env.
    Returns (advantages, value_targets = advantages + values), both float32 (T, B).
    """
    not_terminated = 1.0 - terminated.astype(np.float32)
    not_done = 1.0 - (terminated | truncated).astype(np.float32)
    deltas = rewards + gamma * next_values * not_terminated - values  # (T, B)
    advantages = np.zeros_like(deltas, dtype=np.float32)
    last = np.zeros(deltas.shape[1], dtype=np.float32)
    for t in range(deltas.shape[0] - 1, -1, -1):
        last = deltas[t] + gamma * lam * not_done[t] * last
        advantages[t] = last
    return advantages, (advantages + values).astype(np.float32)

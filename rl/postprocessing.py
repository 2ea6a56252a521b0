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


def vtrace(
    behaviour_logp: "torch.Tensor",
    target_logp: "torch.Tensor",
    rewards: "torch.Tensor",
    values: "torch.Tensor",
    next_values: "torch.Tensor",
    terminated: "torch.Tensor",
    truncated: "torch.Tensor",
    *,
    gamma: float,
    rho_bar: float = 1.0,
    c_bar: float = 1.0,
    lam: float = 1.0,
) -> tuple["torch.Tensor", "torch.Tensor"]:
    """V-trace targets and policy-gradient advantages (Espeholt et al. 2018, eqs. 1-4),
    time-major (T, B), all without gradient.

    rho_t = min(rho_bar, pi/mu),  c_t = lam * min(c_bar, pi/mu)
    delta_t = rho_t (r_t + gamma V(x_{t+1}) - V(x_t))
    v_t = V(x_t) + delta_t + gamma c_t (v_{t+1} - V(x_{t+1}))
    A_t = rho_t (r_t + gamma v_{t+1} - V(x_t))

    ``next_values`` is V of the true next state, as in GAE: V(final observation) on
    truncation (bootstrap), ignored on termination. An episode end stops the recursion, so
    there v_{t+1} is just V(x_{t+1}): no correction from the next episode leaks back.
    Returns (vs, pg_advantages).
    """
    import torch

    with torch.no_grad():
        ratio = (target_logp - behaviour_logp).exp()
        rho = ratio.clamp(max=rho_bar)
        c = lam * ratio.clamp(max=c_bar)
        discount = gamma * (1.0 - terminated.to(values.dtype))  # (T, B)
        go_on = 1.0 - (terminated | truncated).to(values.dtype)
        deltas = rho * (rewards + discount * next_values - values)
        corrections = torch.zeros_like(values)  # v_t - V(x_t)
        acc = torch.zeros_like(values[0])
        for t in range(values.shape[0] - 1, -1, -1):
            acc = deltas[t] + discount[t] * c[t] * go_on[t] * acc
            corrections[t] = acc
        vs = values + corrections
        # v_{t+1}: inside an episode the next step's target; at an episode end (and after the
        # fragment's last step) the plain bootstrap value.
        vs_next = next_values.clone()
        vs_next[:-1] = torch.where(go_on[:-1].bool(), vs[1:], next_values[:-1])
        pg_advantages = rho * (rewards + discount * vs_next - values)
    return vs, pg_advantages

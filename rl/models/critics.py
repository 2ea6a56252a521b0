"""Pieces of the networks that replay-based actor-critics share (SAC, TD3): critics of
state-action pairs, the map between a bounded Box and [-1, 1], and reading a network with
its weights held fixed."""

from __future__ import annotations

from typing import Any

import gymnasium as gym
import numpy as np
import torch
from gymnasium import spaces
from torch import nn

from rlfleet.rl.models.module import ModuleSpec, ObsEncoder, _init, mlp, run_layers


def is_bounded_box(space: gym.Space) -> bool:
    """A 1-D Box with finite bounds: what a tanh-squashed actor can act in."""
    return (isinstance(space, spaces.Box) and len(space.shape) == 1
            and bool(np.all(np.isfinite(space.low)) and np.all(np.isfinite(space.high))))


class ActionBounds(nn.Module):
    """[-1, 1] <-> a bounded Box's units, per dimension (buffers: they travel with the weights)."""

    def __init__(self, space: spaces.Box) -> None:
        super().__init__()
        self.register_buffer("action_mid", torch.as_tensor((space.high + space.low) / 2.0, dtype=torch.float32))
        self.register_buffer("action_half", torch.as_tensor((space.high - space.low) / 2.0, dtype=torch.float32))

    def to_env(self, a: torch.Tensor) -> torch.Tensor:
        return self.action_mid + self.action_half * a

    def from_env(self, action: torch.Tensor) -> torch.Tensor:
        return (action - self.action_mid) / self.action_half


class Critic(nn.Module):
    """Q(s, a) (B,) reading an action ``a`` in [-1, 1] beside the encoded observation, or,
    built with ``action_dim=0``, Q(s, .) (B, ``out``) for every discrete action."""

    def __init__(self, spec: ModuleSpec, action_dim: int, out: int = 1) -> None:
        super().__init__()
        self.encoder = ObsEncoder(spec)
        self.mlp, dim = mlp(self.encoder.out_dim + action_dim, spec.hidden_sizes, spec.activation)
        self.head = _init(nn.Linear(dim, out), 1.0)

    def forward(self, obs: Any, a: torch.Tensor | None = None) -> torch.Tensor:
        x = self.encoder.forward(obs)
        if a is not None:
            x = torch.cat([x, a], -1)
        q = run_layers(self.head, run_layers(self.mlp, x))
        return q if a is None else q.squeeze(-1)


def frozen(module: nn.Module, *args: Any) -> Any:
    """``module(*args)`` with its parameters detached: the gradient reaches the inputs (an
    actor's action) but none of ``module``'s parameters (rl/core.py, "Optimiser groups")."""
    return torch.func.functional_call(module, {k: v.detach() for k, v in module.named_parameters()}, args)

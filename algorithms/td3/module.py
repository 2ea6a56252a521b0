"""TD3's networks: a deterministic tanh actor and twin Q critics, one state dict."""

from __future__ import annotations

import dataclasses
from typing import Any

import torch
from torch import nn

from rlfleet.rl.models.critics import ActionBounds, Critic
from rlfleet.rl.models.module import ModuleSpec, ObsEncoder, _init, mlp, run_layers
from rlfleet.rl.spaces import check_spaces


@dataclasses.dataclass(frozen=True)
class TD3ModuleSpec(ModuleSpec):
    exploration_noise: float = 0.1

    def build(self) -> nn.Module:
        return TD3Module(self)


class Actor(nn.Module):
    """obs -> an action in [-1, 1] (B, dim)."""

    def __init__(self, spec: ModuleSpec, dim: int) -> None:
        super().__init__()
        self.encoder = ObsEncoder(spec)
        self.mlp, width = mlp(self.encoder.out_dim, spec.hidden_sizes, spec.activation)
        self.head = _init(nn.Linear(width, dim), 0.01)

    def forward(self, obs: Any) -> torch.Tensor:
        return torch.tanh(run_layers(self.head, run_layers(self.mlp, self.encoder.forward(obs))))


class TD3Module(nn.Module):
    capabilities: frozenset[str] = frozenset()  # acts, evaluates, serves and exports its greedy policy

    def __init__(self, spec: TD3ModuleSpec) -> None:
        super().__init__()
        check_spaces(spec.observation_space, spec.action_space, spec.env_name)
        self.spec = spec
        dim = int(spec.action_space.shape[0])
        self.bounds = ActionBounds(spec.action_space)
        self.actor = Actor(spec, dim)
        self.critics = nn.ModuleList(Critic(spec, dim) for _ in range(2))
        self.register_buffer("exploration_noise", torch.tensor(float(spec.exploration_noise)))

    @torch.inference_mode()
    def forward_exploration(self, obs: Any) -> dict[str, Any]:
        a = self.actor(obs)
        a = (a + self.exploration_noise * torch.randn_like(a)).clamp(-1.0, 1.0)
        return {"actions": [self.bounds.to_env(a)]}

    @torch.inference_mode()
    def forward_inference(self, obs: Any) -> list[torch.Tensor]:
        return self.greedy_actions(obs)

    def greedy_actions(self, obs: Any) -> list[torch.Tensor]:
        return [self.bounds.to_env(self.actor(obs))]

    @torch.inference_mode()
    def forward_details(self, obs: Any) -> dict[str, torch.Tensor]:
        """Q of the greedy action by the first critic, for serving."""
        return {"q_value": self.critics[0](obs, self.actor(obs))}

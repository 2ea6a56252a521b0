"""DQN's network: action values Q(s, .) for a Discrete action space.

Exploration is epsilon-greedy, and epsilon is a buffer of the module: it is part of the
weights every broadcast carries, so runners always act with the schedule's current value,
with no extra channel between driver and runners (``DQN.acting_weights`` sets it).
"""

from __future__ import annotations

import dataclasses
import math
from typing import Any

import torch
from gymnasium import spaces
from torch import nn

from rlfleet.rl.core import Q_VALUES
from rlfleet.rl.models.distributions import mask_logits
from rlfleet.rl.models.module import ModuleSpec, ObsEncoder, _init, legal_actions, mlp, run_layers
from rlfleet.rl.spaces import UnsupportedSpaceError, check_spaces


@dataclasses.dataclass(frozen=True)
class QModuleSpec(ModuleSpec):
    """A ModuleSpec that builds a Q-network."""

    dueling: bool = False
    """Separate state-value and advantage streams (Wang et al. 2016)."""

    def build(self) -> nn.Module:
        return QModule(self)


class QModule(nn.Module):
    capabilities = frozenset({Q_VALUES})

    def __init__(self, spec: QModuleSpec) -> None:
        super().__init__()
        check_spaces(spec.observation_space, spec.action_space, spec.env_name)
        if not isinstance(spec.action_space, spaces.Discrete):
            raise UnsupportedSpaceError(
                f"env {spec.env_name!r}: a Q-network needs a Discrete action space, got {spec.action_space}"
            )
        self.spec = spec
        self.num_actions = int(spec.action_space.n)
        self.encoder = ObsEncoder(spec)
        self.mlp, dim = mlp(self.encoder.out_dim, spec.hidden_sizes, spec.activation)
        if spec.dueling:
            self.value_head = _init(nn.Linear(dim, 1), 1.0)
            self.advantage_head = _init(nn.Linear(dim, self.num_actions), math.sqrt(0.01))
        else:
            self.q_head = _init(nn.Linear(dim, self.num_actions), 1.0)
        self.register_buffer("epsilon", torch.tensor(1.0))

    def forward_train(self, obs: Any) -> torch.Tensor:
        """Q(s, a) for every action, (B, A)."""
        h = run_layers(self.mlp, self.encoder.forward(obs))
        if self.spec.dueling:
            # Q = V + A - mean(A): the mean keeps V and A identifiable (Wang et al. 2016, eq. 9).
            adv = run_layers(self.advantage_head, h)
            return run_layers(self.value_head, h) + adv - adv.mean(-1, keepdim=True)
        return run_layers(self.q_head, h)

    def greedy(self, obs: Any) -> torch.Tensor:
        """argmax_a Q(s, a) over the legal actions where ``obs`` has a mask, (B,)."""
        q = self.forward_train(obs)
        legal = legal_actions(obs)
        return (q if legal is None else mask_logits(q, legal)).argmax(-1)

    @torch.inference_mode()
    def forward_exploration(self, obs: Any) -> dict[str, Any]:
        """Epsilon-greedy actions, random ones uniform over the legal actions: {"actions": [(B,) int64]}."""
        greedy = self.greedy(obs)
        explore = torch.rand(greedy.shape) < self.epsilon
        legal = legal_actions(obs)
        if legal is None:
            random_actions = torch.randint(self.num_actions, greedy.shape)
        else:
            random_actions = torch.multinomial(legal.float(), 1).squeeze(-1)
        return {"actions": [torch.where(explore, random_actions, greedy)]}

    @torch.inference_mode()
    def forward_inference(self, obs: Any) -> list[torch.Tensor]:
        return self.greedy_actions(obs)

    def greedy_actions(self, obs: Any) -> list[torch.Tensor]:
        return [self.greedy(obs)]

    @torch.inference_mode()
    def forward_details(self, obs: Any) -> dict[str, torch.Tensor]:
        """What serving returns on request besides the action: Q(s, .), (B, A)."""
        return {"q_values": self.forward_train(obs)}

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

from rlfleet.rl.batch import flatten_time
from rlfleet.rl.core import Q_VALUES
from rlfleet.rl.models.distributions import mask_logits
from rlfleet.rl.models.memory import attach_core
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
        in_dim = attach_core(self, spec, self.encoder.out_dim)  # with memory (R2D2), the MLP reads the core
        self.mlp, dim = mlp(in_dim, spec.hidden_sizes, spec.activation)
        if spec.dueling:
            self.value_head = _init(nn.Linear(dim, 1), 1.0)
            self.advantage_head = _init(nn.Linear(dim, self.num_actions), math.sqrt(0.01))
        else:
            self.q_head = _init(nn.Linear(dim, self.num_actions), 1.0)
        self.register_buffer("epsilon", torch.tensor(1.0))

    def head(self, feats: torch.Tensor) -> torch.Tensor:
        """Q(s, a) for every action from the features (B, F) the MLP reads, (B, A)."""
        h = run_layers(self.mlp, feats)
        if self.spec.dueling:
            # Q = V + A - mean(A): the mean keeps V and A identifiable (Wang et al. 2016, eq. 9).
            adv = run_layers(self.advantage_head, h)
            return run_layers(self.value_head, h) + adv - adv.mean(-1, keepdim=True)
        return run_layers(self.q_head, h)

    def forward_train(self, obs: Any) -> torch.Tensor:
        """Q(s, a) for every action, (B, A) (without memory; with it, :meth:`sequence_q`)."""
        return self.head(self.encoder.forward(obs))

    def step_q(self, obs: Any, state: torch.Tensor | None) -> tuple[torch.Tensor, torch.Tensor | None]:
        """Acting: (Q(s, .) (B, A), the next state), the core stepped once where there is one."""
        feats = self.encoder.forward(obs)
        if self.core is None:
            return self.head(feats), None
        feats, state = self.core.forward_step(feats, state)
        return self.head(feats), state

    def sequence_q(self, obs: Any, state: torch.Tensor, is_first: torch.Tensor,
                   cut: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """Training with memory: N sequences (N, W, ...) from their stored states (N, S), the
        state zeroed at ``is_first`` (N, W), no gradient back past ``cut`` (the burn-in's
        end): (Q (N, W, A), the state after each step (N, W, S))."""
        n, w = is_first.shape
        feats, states = self.core.forward_sequence(self.encoder.forward(flatten_time(obs)).reshape(n, w, -1), state, is_first,
                                                   cut=cut)
        return self.head(feats.reshape(n * w, -1)).reshape(n, w, -1), states

    def next_q(self, next_obs: Any, states: torch.Tensor) -> torch.Tensor:
        """Q of each step's next observation (N, W, ...), from the state after the step
        (N, W, S): the core stepped once more, (N, W, A)."""
        n, w = states.shape[:2]
        feats, _ = self.core.forward_step(self.encoder.forward(flatten_time(next_obs)), flatten_time(states))
        return self.head(feats).reshape(n, w, -1)

    @staticmethod
    def greedy(q: torch.Tensor, obs: Any) -> torch.Tensor:
        """argmax_a Q(s, a) over the legal actions where ``obs`` has a mask, (B,)."""
        legal = legal_actions(obs)
        return (q if legal is None else mask_logits(q, legal)).argmax(-1)

    @torch.inference_mode()
    def forward_exploration(self, obs: Any, state: torch.Tensor | None = None) -> dict[str, Any]:
        """Epsilon-greedy actions, random ones uniform over the legal actions: {"actions": [(B,) int64]},
        and with memory the next ``state``."""
        q, state = self.step_q(obs, state)
        greedy = self.greedy(q, obs)
        explore = torch.rand(greedy.shape) < self.epsilon
        legal = legal_actions(obs)
        if legal is None:
            random_actions = torch.randint(self.num_actions, greedy.shape)
        else:
            random_actions = torch.multinomial(legal.float(), 1).squeeze(-1)
        out = {"actions": [torch.where(explore, random_actions, greedy)]}
        if state is not None:
            out["state"] = state
        return out

    @torch.inference_mode()
    def forward_inference(self, obs: Any, state: torch.Tensor | None = None) -> Any:
        return self.greedy_actions(obs, state)

    def greedy_actions(self, obs: Any, state: torch.Tensor | None = None) -> Any:
        """[argmax actions]; with memory ([argmax actions], next state)."""
        q, state = self.step_q(obs, state)
        actions = [self.greedy(q, obs)]
        return actions if self.core is None else (actions, state)

    @torch.inference_mode()
    def forward_details(self, obs: Any, state: torch.Tensor | None = None) -> dict[str, torch.Tensor]:
        """What serving returns on request besides the action: Q(s, .), (B, A)."""
        return {"q_values": self.step_q(obs, state)[0]}

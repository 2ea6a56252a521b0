"""SAC's networks: a tanh-squashed Gaussian actor (or a categorical one for discrete
actions), twin Q critics, and the entropy temperature, in one module so that one state
dict holds them (checkpoints, broadcasts, export)."""

from __future__ import annotations

import dataclasses
import math
from typing import Any

import torch
from gymnasium import spaces
from torch import nn

from rlfleet.rl.models.critics import ActionBounds, Critic, is_bounded_box
from rlfleet.rl.models.critics import frozen as frozen_call
from rlfleet.rl.models.distributions import mask_logits
from rlfleet.rl.models.module import ModuleSpec, ObsEncoder, _init, legal_actions, mlp, run_layers
from rlfleet.rl.spaces import UnsupportedSpaceError, check_spaces

LOG_STD_MIN, LOG_STD_MAX = -20.0, 2.0  # SB3's and the paper's clamp on the actor's log-std


@dataclasses.dataclass(frozen=True)
class SACModuleSpec(ModuleSpec):
    """A ModuleSpec that builds SAC's actor, critics and temperature."""

    initial_alpha: float = 1.0

    def build(self) -> nn.Module:
        return SACModule(self)


def squash_log_prob(u: torch.Tensor, normal_logp: torch.Tensor) -> torch.Tensor:
    """log pi(tanh(u)) from log N(u): minus log |d tanh(u) / du| = log(1 - tanh(u)^2) per
    dimension, written 2 (log 2 - u - softplus(-2u)) so that it never takes log(0)."""
    return normal_logp - (2.0 * (math.log(2.0) - u - nn.functional.softplus(-2.0 * u))).sum(-1)


class SACModule(nn.Module):
    capabilities: frozenset[str] = frozenset()  # acts, evaluates, serves and exports its greedy policy

    def __init__(self, spec: SACModuleSpec) -> None:
        super().__init__()
        check_spaces(spec.observation_space, spec.action_space, spec.env_name)
        space = spec.action_space
        self.spec = spec
        self.discrete = isinstance(space, spaces.Discrete)
        if not self.discrete:
            if not is_bounded_box(space):
                raise UnsupportedSpaceError(
                    f"SAC needs a Discrete or a bounded 1-D Box action space (it squashes actions into the "
                    f"bounds); env {spec.env_name!r} has {space}"
                )
            self.bounds = ActionBounds(space)
        n = int(space.n) if self.discrete else int(space.shape[0])
        self.actor_encoder = ObsEncoder(spec)
        self.actor_mlp, dim = mlp(self.actor_encoder.out_dim, spec.hidden_sizes, spec.activation)
        self.actor_head = _init(nn.Linear(dim, n if self.discrete else 2 * n), 0.01)
        # A discrete critic gives Q(s, .) for every action; a continuous one reads the action.
        critic_in = 0 if self.discrete else n
        self.critics = nn.ModuleList(Critic(spec, critic_in, n if self.discrete else 1) for _ in range(2))
        self.log_alpha = nn.Parameter(torch.tensor(math.log(spec.initial_alpha), dtype=torch.float32))

    # -- the actor ---------------------------------------------------------------------------
    def actor_parameters(self) -> list[nn.Parameter]:
        return [*self.actor_encoder.parameters(), *self.actor_mlp.parameters(), *self.actor_head.parameters()]

    def actor_out(self, obs: Any) -> torch.Tensor:
        """Logits (B, A), illegal actions masked, or mean and log-std (B, 2 dim(A))."""
        out = run_layers(self.actor_head, run_layers(self.actor_mlp, self.actor_encoder.forward(obs)))
        legal = legal_actions(obs)
        return out if legal is None else mask_logits(out, legal)

    def sample(self, obs: Any, noise: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """Continuous: a reparameterised draw in [-1, 1] (B, dim) and its log-prob (B,),
        from standard normal ``noise`` (B, dim) when given."""
        mean, log_std = self.actor_out(obs).chunk(2, -1)
        log_std = log_std.clamp(LOG_STD_MIN, LOG_STD_MAX)
        noise = torch.randn_like(mean) if noise is None else noise
        u = mean + log_std.exp() * noise
        normal_logp = (-0.5 * noise.pow(2) - log_std - 0.5 * math.log(2 * math.pi)).sum(-1)
        return torch.tanh(u), squash_log_prob(u, normal_logp)

    def to_env(self, a: torch.Tensor) -> torch.Tensor:
        """[-1, 1] -> the Box's bounds."""
        return self.bounds.to_env(a)

    def from_env(self, action: torch.Tensor) -> torch.Tensor:
        """The Box's bounds -> [-1, 1] (what the critics read)."""
        return self.bounds.from_env(action)

    # -- the critics --------------------------------------------------------------------------
    def q_values(self, obs: Any, a: torch.Tensor | None = None, critics: nn.ModuleList | None = None,
                 *, frozen: bool = False) -> list[torch.Tensor]:
        """Each critic's Q(s, a) (B,) for continuous actions ``a`` in [-1, 1], or Q(s, .)
        (B, A) for discrete ones; ``critics`` are the target copies when given. ``frozen``
        reads the critics' weights detached: the gradient reaches ``a`` (the actor's loss)
        but no critic parameter."""
        critics = critics if critics is not None else self.critics
        return [frozen_call(c, obs, a) if frozen else c.forward(obs, a) for c in critics]

    # -- acting (env runners, evaluation, serving) ------------------------------------------
    @torch.inference_mode()
    def forward_exploration(self, obs: Any) -> dict[str, Any]:
        """Sampled actions in the env's units: {"actions": [(B,) or (B, dim)]}."""
        if self.discrete:
            return {"actions": [torch.distributions.Categorical(logits=self.actor_out(obs)).sample()]}
        return {"actions": [self.to_env(self.sample(obs)[0])]}

    @torch.inference_mode()
    def forward_inference(self, obs: Any) -> list[torch.Tensor]:
        return self.greedy_actions(obs)

    def greedy_actions(self, obs: Any) -> list[torch.Tensor]:
        """The most likely action: the legal argmax, or tanh of the Gaussian's mean."""
        out = self.actor_out(obs)
        if self.discrete:
            return [out.argmax(-1)]
        return [self.to_env(torch.tanh(out.chunk(2, -1)[0]))]

    @torch.inference_mode()
    def forward_details(self, obs: Any) -> dict[str, torch.Tensor]:
        """What serving returns on request besides the action."""
        out = self.actor_out(obs)
        if self.discrete:
            return {"action_probs": out.softmax(-1)}
        mean, log_std = out.chunk(2, -1)
        return {"action_mean": self.to_env(torch.tanh(mean)), "action_log_std": log_std.clamp(LOG_STD_MIN, LOG_STD_MAX)}

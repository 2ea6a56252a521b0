"""Action distributions, each a pure function of the policy head's output tensor.

Small hand-written classes rather than ``torch.distributions``: the acting path runs once
per env step, and argument validation there costs more than the maths.
"""

from __future__ import annotations

import math
from typing import Sequence

import gymnasium as gym
import torch
from gymnasium import spaces

from rlfleet.rl.spaces import leaf_spaces

_LOG_2PI = math.log(2.0 * math.pi)


class Categorical:
    def __init__(self, logits: torch.Tensor) -> None:
        self.logits = torch.log_softmax(logits, -1)  # (B, n), normalised

    def sample(self) -> torch.Tensor:
        # Gumbel-max: argmax(log p - log E), E ~ Exp(1), draws exactly from p, in a third
        # of torch.multinomial's time on a small batch. E is kept above 0 so that -log E
        # stays finite and a masked action (log p the dtype's lowest) never wins.
        noise = torch.empty_like(self.logits).exponential_().clamp_(min=torch.finfo(self.logits.dtype).tiny)
        return (self.logits - noise.log_()).argmax(-1)

    def deterministic(self) -> torch.Tensor:
        return self.logits.argmax(-1)

    def logp(self, actions: torch.Tensor) -> torch.Tensor:
        return self.logits.gather(-1, actions.long().unsqueeze(-1)).squeeze(-1)

    def entropy(self) -> torch.Tensor:
        return -(self.logits.exp() * self.logits).sum(-1)

    def kl(self, other: "Categorical") -> torch.Tensor:
        return (self.logits.exp() * (self.logits - other.logits)).sum(-1)


class MultiCategorical:
    """Independent categoricals, one per entry of a MultiDiscrete; actions are (B, k)."""

    def __init__(self, logits: torch.Tensor, nvec: Sequence[int]) -> None:
        self.cats = [Categorical(x) for x in torch.split(logits, list(nvec), dim=-1)]

    def sample(self) -> torch.Tensor:
        return torch.stack([c.sample() for c in self.cats], -1)

    def deterministic(self) -> torch.Tensor:
        return torch.stack([c.deterministic() for c in self.cats], -1)

    def logp(self, actions: torch.Tensor) -> torch.Tensor:
        return sum(c.logp(actions[..., i]) for i, c in enumerate(self.cats))

    def entropy(self) -> torch.Tensor:
        return sum(c.entropy() for c in self.cats)

    def kl(self, other: "MultiCategorical") -> torch.Tensor:
        return sum(a.kl(b) for a, b in zip(self.cats, other.cats))


class DiagGaussian:
    """Inputs are ``[mean, log_std]`` concatenated on the last axis, (B, 2d)."""

    def __init__(self, inputs: torch.Tensor) -> None:
        self.mean, self.log_std = inputs.chunk(2, dim=-1)
        self.std = self.log_std.exp()

    def sample(self) -> torch.Tensor:
        return self.mean + self.std * torch.randn_like(self.mean)

    def deterministic(self) -> torch.Tensor:
        return self.mean

    def logp(self, actions: torch.Tensor) -> torch.Tensor:
        z = (actions - self.mean) / self.std
        return (-0.5 * z.pow(2) - self.log_std - 0.5 * _LOG_2PI).sum(-1)

    def entropy(self) -> torch.Tensor:
        return (self.log_std + 0.5 * (1.0 + _LOG_2PI)).sum(-1)

    def kl(self, other: "DiagGaussian") -> torch.Tensor:
        var_ratio = (self.std / other.std).pow(2)
        mean_term = ((self.mean - other.mean) / other.std).pow(2)
        return 0.5 * (var_ratio + mean_term - 1.0 - var_ratio.log()).sum(-1)


LeafDistribution = Categorical | MultiCategorical | DiagGaussian


def dist_input_size(space: gym.Space) -> int:
    """Width of the head output that parameterises the distribution of one leaf space."""
    if isinstance(space, spaces.Discrete):
        return int(space.n)
    if isinstance(space, spaces.MultiDiscrete):
        return int(space.nvec.sum())
    return 2 * int(space.shape[0])


def mask_logits(logits: torch.Tensor, legal: torch.Tensor) -> torch.Tensor:
    """Illegal entries of ``logits`` (or Q-values) set to the dtype's most negative finite
    value: an illegal action gets probability exactly 0 (and never wins an argmax) while
    0 * log p stays 0 in entropies and KLs, where -inf would make them NaN; no gradient
    reaches the illegal entries."""
    return torch.where(legal.bool(), logits, torch.finfo(logits.dtype).min)


class ActionDistribution:
    """The joint distribution over all leaves of a (possibly nested) action space.

    Actions are a list of leaf tensors in dm-tree order; log-probs and entropies add up,
    because the leaves are sampled independently given the observation.

    ``mask`` (B, n) marks the legal actions of a Discrete or MultiDiscrete space (rl/core.py,
    "Action masks"); see :func:`mask_logits`.
    """

    def __init__(self, inputs: torch.Tensor, action_space: gym.Space, mask: torch.Tensor | None = None) -> None:
        if mask is not None:
            inputs = mask_logits(inputs, mask)
        self.leaves: list[LeafDistribution] = []
        leaves = leaf_spaces(action_space)
        chunks = [inputs] if len(leaves) == 1 else torch.split(inputs, [dist_input_size(s) for s in leaves], dim=-1)
        for chunk, space in zip(chunks, leaves):
            if isinstance(space, spaces.Discrete):
                self.leaves.append(Categorical(chunk))
            elif isinstance(space, spaces.MultiDiscrete):
                self.leaves.append(MultiCategorical(chunk, space.nvec.tolist()))
            else:
                self.leaves.append(DiagGaussian(chunk))

    def sample(self) -> list[torch.Tensor]:
        return [d.sample() for d in self.leaves]

    def deterministic(self) -> list[torch.Tensor]:
        return [d.deterministic() for d in self.leaves]

    def logp(self, actions: list[torch.Tensor]) -> torch.Tensor:
        return _total([d.logp(a) for d, a in zip(self.leaves, actions)])

    def entropy(self) -> torch.Tensor:
        return _total([d.entropy() for d in self.leaves])

    def kl(self, other: "ActionDistribution") -> torch.Tensor:
        return _total([a.kl(b) for a, b in zip(self.leaves, other.leaves)])


def _total(terms: list[torch.Tensor]) -> torch.Tensor:
    """The sum of the leaves' terms; one leaf's term as it is (no ``0 +``: the acting path
    runs once per env step)."""
    return sum(terms[1:], terms[0])

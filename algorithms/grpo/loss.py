"""GRPO's pieces (Shao et al. 2024, DeepSeekMath) and the variants the field compares:
group-relative advantages, the k3 estimator of KL to a frozen reference, and the clipped
loss with masks.

Every tensor over tokens is (B, T) with ``mask`` 1 on completion tokens only: prompt and
padding tokens never enter the loss or the metrics.

The variants (``loss_variant`` in algorithms/grpo/config.py sets them together; each is a
knob of its own too):

- how a batch's token terms become one number (``aggregation``): ``token_mean`` divides
  the sum over every completion token by their number (GRPO as most trainers run it, and
  DAPO); ``sequence_mean`` averages each completion's tokens first, then the completions
  (GRPO's paper); ``constant`` divides the sum by completions x the token budget, so
  long and short completions are not weighted by their length (Dr. GRPO);
- the advantage's division by its group's std (Dr. GRPO drops it);
- the clip range ``[1 - clip_low, 1 + clip_high]`` (DAPO's clip-higher widens the top);
- the ratio (``ratio_level``): per token, or one per completion, the exponent of the
  mean per-token log-ratio (GSPO), clipped and averaged over completions.
"""

from __future__ import annotations

import dataclasses

import torch

AGGREGATIONS = ("token_mean", "sequence_mean", "constant")
RATIO_LEVELS = ("token", "sequence")


def group_advantages(rewards: torch.Tensor, group_size: int, *, normalize_std: bool = True, eps: float = 1e-6) -> torch.Tensor:
    """(N,) rewards of N = prompts x group_size completions, grouped consecutively ->
    (N,) advantages: reward minus its group's mean, divided by the group's std (unless
    ``normalize_std`` is off).

    A group whose completions all scored the same has no signal: its advantages are 0
    (not NaN), so it costs nothing but adds no gradient."""
    groups = rewards.reshape(-1, group_size)  # (P, G)
    centred = groups - groups.mean(-1, keepdim=True)
    if normalize_std:
        centred = centred / (groups.std(-1, keepdim=True, unbiased=False) + eps)
    return centred.reshape(-1)


def kl_k3(logp: torch.Tensor, ref_logp: torch.Tensor) -> torch.Tensor:
    """Per-token estimate of KL(pi || ref) from samples of pi (Schulman 2020, "k3"):
    r - log r - 1 with r = ref/pi. Unbiased, always >= 0, and low-variance when the two
    policies are close, which is where a KL penalty keeps them."""
    log_ratio = ref_logp - logp
    return log_ratio.exp() - log_ratio - 1.0


def masked_mean(x: torch.Tensor, mask: torch.Tensor, count: torch.Tensor | None = None) -> torch.Tensor:
    """Mean over the tokens where ``mask`` is 1 (every completion token weighs the same);
    ``count`` replaces the number of those tokens (the all-reduced count when a minibatch
    is split over learners)."""
    return (x * mask).sum() / (mask.sum() if count is None else count).clamp(min=1.0)


@dataclasses.dataclass(frozen=True)
class Denominators:
    """What the sums of a minibatch are divided by. Under data parallelism each learner
    holds a shard, so these are the all-reduced counts over learners divided by their
    number (``Learner.mean_count``); alone, the shard's own counts."""

    tokens: torch.Tensor  # completion tokens
    sequences: torch.Tensor  # completions
    max_tokens: int  # the token budget of a completion (Dr. GRPO's constant)

    @classmethod
    def local(cls, mask: torch.Tensor) -> "Denominators":
        return cls(mask.sum(), torch.tensor(float(mask.shape[0])), mask.shape[1])


def aggregate(x: torch.Tensor, mask: torch.Tensor, how: str, den: Denominators) -> torch.Tensor:
    """(B, T) token terms -> one number, as ``how`` (one of AGGREGATIONS) says."""
    if how == "token_mean":
        return (x * mask).sum() / den.tokens.clamp(min=1.0)
    if how == "sequence_mean":
        per_sequence = (x * mask).sum(1) / mask.sum(1).clamp(min=1.0)
        return per_sequence.sum() / den.sequences.clamp(min=1.0)
    if how == "constant":
        return (x * mask).sum() / (den.sequences.clamp(min=1.0) * den.max_tokens)
    raise ValueError(f"aggregation must be one of {', '.join(AGGREGATIONS)}, got {how!r}")


def grpo_loss(
    logp: torch.Tensor,
    old_logp: torch.Tensor,
    ref_logp: torch.Tensor | None,
    advantages: torch.Tensor,
    mask: torch.Tensor,
    *,
    clip_param: float,
    kl_coef: float,
    clip_param_high: float | None = None,
    aggregation: str = "token_mean",
    ratio_level: str = "token",
    token_count: torch.Tensor | None = None,
    denominators: Denominators | None = None,
    token_weights: torch.Tensor | None = None,
) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """logp, old_logp, ref_logp, mask: (B, T); advantages: (B,), one per completion.

    Clipped surrogate (as PPO) with the completion's advantage, per token or per
    completion (``ratio_level``), aggregated as ``aggregation`` says (a sequence-level
    ratio is one term per completion: averaged over completions), plus ``kl_coef`` times
    the k3 KL to the reference as a loss term; ``ref_logp`` None skips it.
    ``token_count`` (the older form) sets the token denominator alone. ``token_weights``
    (B, T), without gradient, multiply each token's surrogate (truncated importance
    weights); with a sequence-level ratio, each completion's mean weight.
    """
    den = denominators or Denominators.local(mask)
    if token_count is not None:
        den = dataclasses.replace(den, tokens=token_count)
    low, high = clip_param, clip_param if clip_param_high is None else clip_param_high
    metrics: dict[str, torch.Tensor] = {}
    if ratio_level == "token":
        ratio = (logp - old_logp).exp()  # (B, T)
        adv = advantages[:, None]  # (B, 1) broadcast over the completion's tokens
        surrogate = torch.min(ratio * adv, ratio.clamp(1 - low, 1 + high) * adv)
        if token_weights is not None:
            surrogate = surrogate * token_weights
        policy_loss = -aggregate(surrogate, mask, aggregation, den)
        with torch.no_grad():
            clipped = ((ratio < 1 - low) | (ratio > 1 + high)).float()
            metrics["losses/clip_fraction"] = aggregate(clipped, mask, "token_mean", den)
    elif ratio_level == "sequence":
        log_ratio = ((logp - old_logp) * mask).sum(1) / mask.sum(1).clamp(min=1.0)  # (B,)
        ratio = log_ratio.exp()
        surrogate = torch.min(ratio * advantages, ratio.clamp(1 - low, 1 + high) * advantages)
        if token_weights is not None:
            surrogate = surrogate * (token_weights * mask).sum(1) / mask.sum(1).clamp(min=1.0)
        policy_loss = -surrogate.sum() / den.sequences.clamp(min=1.0)
        with torch.no_grad():
            clipped = ((ratio < 1 - low) | (ratio > 1 + high)).float()
            metrics["losses/clip_fraction"] = clipped.sum() / den.sequences.clamp(min=1.0)
    else:
        raise ValueError(f"ratio_level must be one of {', '.join(RATIO_LEVELS)}, got {ratio_level!r}")
    loss = policy_loss
    metrics["losses/policy_loss"] = policy_loss.detach()
    if ref_logp is not None:
        kl = aggregate(kl_k3(logp, ref_logp), mask, "sequence_mean" if ratio_level == "sequence" else aggregation, den)
        loss = loss + kl_coef * kl
        metrics["kl_to_ref"] = kl.detach()
    return loss, metrics


def kl_reward_penalty(old_logp: torch.Tensor, ref_logp: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """(B,) the sampled completion's log-ratio to the reference, sum over its tokens of
    log pi_old - log ref (the k1 estimate of the sequence's KL): what ``kl_mode: reward``
    subtracts, times ``kl_coef``, from each reward before advantages."""
    return ((old_logp - ref_logp) * mask).sum(1)


def overlong_penalty(lengths: torch.Tensor, *, max_tokens: int, buffer: int, factor: float = 1.0) -> torch.Tensor:
    """DAPO's soft overlong punishment, (N,) from completion lengths: 0 up to
    ``max_tokens - buffer`` tokens, then falling linearly to ``-factor`` at ``max_tokens``."""
    if buffer <= 0:
        return torch.zeros_like(lengths, dtype=torch.float32)
    over = (lengths.float() - (max_tokens - buffer)).clamp(min=0.0)
    return -factor * (over / buffer).clamp(max=1.0)


def informative_groups(rewards: torch.Tensor, group_size: int) -> torch.Tensor:
    """(P,) bool: the groups whose rewards are not all equal (DAPO's dynamic sampling
    keeps only these: a group of equal rewards has zero advantages everywhere)."""
    groups = rewards.reshape(-1, group_size)
    return (groups.max(-1).values - groups.min(-1).values) > 0


def importance_metrics(train_logp: torch.Tensor, sampler_logp: torch.Tensor, mask: torch.Tensor,
                       den: Denominators) -> dict[str, torch.Tensor]:
    """How far the sampler's policy is from the one being trained, per completion token:
    the mean ratio pi_train / pi_sampler and the share of tokens whose ratio lies outside
    [0.8, 1.25] (stale weights, or a sampler that computes differently)."""
    with torch.no_grad():
        ratio = (train_logp - sampler_logp).exp()
        outside = ((ratio < 0.8) | (ratio > 1.25)).float()
        return {"importance/ratio_mean": aggregate(ratio, mask, "token_mean", den),
                "importance/outside_0.8_1.25": aggregate(outside, mask, "token_mean", den)}

"""GRPO's pieces (Shao et al. 2024, DeepSeekMath): group-relative advantages, the k3
estimator of KL to a frozen reference, and the clipped token-level loss with masks.

Every tensor over tokens is (B, T) with ``mask`` 1 on completion tokens only: prompt and
padding tokens never enter the loss or the metrics.
"""

from __future__ import annotations

import torch


def group_advantages(rewards: torch.Tensor, group_size: int, *, normalize_std: bool = True, eps: float = 1e-6) -> torch.Tensor:
    """(N,) rewards of N = prompts x group_size completions, grouped consecutively ->
    (N,) advantages: reward minus its group's mean, divided by the group's std.

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


def grpo_loss(
    logp: torch.Tensor,
    old_logp: torch.Tensor,
    ref_logp: torch.Tensor | None,
    advantages: torch.Tensor,
    mask: torch.Tensor,
    *,
    clip_param: float,
    kl_coef: float,
    token_count: torch.Tensor | None = None,
) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """logp, old_logp, ref_logp, mask: (B, T); advantages: (B,), one per completion.
    Means are over completion tokens (divided by ``token_count`` when given).

    Clipped surrogate per token (as PPO) with the completion's advantage, plus
    ``kl_coef`` times the k3 KL to the reference as a loss term; ``ref_logp`` None (and
    kl_coef 0) skips the reference entirely.
    """
    ratio = (logp - old_logp).exp()  # (B, T)
    adv = advantages[:, None]  # (B, 1) broadcast over the completion's tokens
    surrogate = torch.min(ratio * adv, ratio.clamp(1 - clip_param, 1 + clip_param) * adv)
    policy_loss = -masked_mean(surrogate, mask, token_count)
    loss = policy_loss
    metrics = {"losses/policy_loss": policy_loss.detach()}
    if ref_logp is not None:
        kl = masked_mean(kl_k3(logp, ref_logp), mask, token_count)
        loss = loss + kl_coef * kl
        metrics["kl_to_ref"] = kl.detach()
    with torch.no_grad():
        metrics["losses/clip_fraction"] = masked_mean(((ratio - 1).abs() > clip_param).float(), mask, token_count)
    return loss, metrics

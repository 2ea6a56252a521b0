"""PPO's loss: clipped surrogate, (optionally clipped) value loss, entropy bonus."""

from __future__ import annotations

import torch

from rlfleet.algorithms.ppo.config import PPOConfig
from rlfleet.rl.batch import burn_in_end, flatten_time
from rlfleet.rl.learner import Learner, TensorBatch


def ppo_loss(
    logp: torch.Tensor,
    old_logp: torch.Tensor,
    advantages: torch.Tensor,
    values: torch.Tensor,
    old_values: torch.Tensor,
    value_targets: torch.Tensor,
    entropy: torch.Tensor,
    *,
    clip_param: float,
    vf_clip_param: float | None,
    vf_coef: float,
    entropy_coef: float,
    count: torch.Tensor | float | None = None,
) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """All inputs are (N,) over the minibatch's rows (advantages already normalised, if
    they are to be). The means divide by ``count`` when given (the all-reduced count when
    one minibatch is split over learners unevenly), else by N."""
    mean = (lambda x: x.sum() / count) if count is not None else (lambda x: x.mean())
    log_ratio = logp - old_logp
    ratio = log_ratio.exp()
    policy_loss = -mean(torch.min(ratio * advantages, ratio.clamp(1 - clip_param, 1 + clip_param) * advantages))
    value_err = (values - value_targets).pow(2)
    if vf_clip_param is not None:
        clipped = old_values + (values - old_values).clamp(-vf_clip_param, vf_clip_param)
        value_err = torch.max(value_err, (clipped - value_targets).pow(2))
    value_loss = 0.5 * mean(value_err)
    entropy_mean = mean(entropy)
    loss = policy_loss + vf_coef * value_loss - entropy_coef * entropy_mean
    with torch.no_grad():
        # k3 estimator of KL(old || new) (Schulman 2020): unbiased and always >= 0.
        approx_kl = mean((ratio - 1) - log_ratio)
        clip_fraction = mean(((ratio - 1).abs() > clip_param).float())
    metrics = {
        "losses/policy_loss": policy_loss.detach(),
        "losses/value_loss": value_loss.detach(),
        "losses/entropy": entropy_mean.detach(),
        "losses/approx_kl": approx_kl,
        "losses/clip_fraction": clip_fraction,
    }
    return loss, metrics


class PPOLearner(Learner):
    config: PPOConfig

    def compute_loss(self, batch: TensorBatch) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        c = self.config
        count = None
        if c.memory:  # sequences (N, W): the loss is over the steps of their loss mask
            dist, values = self.module.forward_train(batch["obs"], batch["state_in"], batch["is_first"],
                                                     cut=burn_in_end(batch["loss_mask"]))
            steps = batch["loss_mask"].reshape(-1) > 0  # (N * W,)
            logp, entropy, values = dist.logp(flatten_time(batch["actions"]))[steps], dist.entropy()[steps], values[steps]
            batch = {k: flatten_time(batch[k])[steps] for k in ("logp", "advantages", "values", "value_targets")}
            count = self.mean_count(steps.sum())  # learners hold unequal numbers of steps
        else:
            dist, values = self.module.forward_train(batch["obs"])
            logp, entropy = dist.logp(batch["actions"]), dist.entropy()
        advantages = batch["advantages"]
        if c.normalize_advantages:  # per minibatch, over every learner's part of it
            advantages = self.normalize(advantages)
        return ppo_loss(
            logp,
            batch["logp"],
            advantages,
            values,
            batch["values"],
            batch["value_targets"],
            entropy,
            clip_param=c.clip_param,
            vf_clip_param=c.vf_clip_param,
            vf_coef=c.vf_coef,
            entropy_coef=c.entropy_coef,
            count=count,
        )

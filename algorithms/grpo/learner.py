"""GRPO's learner: rewards shaped (overlong penalty, KL as a reward penalty), advantages
within each group and reference log-probs once per batch, then the clipped loss of the
configured variant (algorithms/grpo/config.py) on every minibatch."""

from __future__ import annotations

import torch

from rlfleet.algorithms.grpo.config import GRPOConfig
from rlfleet.algorithms.grpo.loss import (Denominators, group_advantages, grpo_loss, importance_metrics,
                                         kl_reward_penalty, overlong_penalty)
from rlfleet.rl.learner import TensorBatch
from rlfleet.rl.lm.learner import LMLearner


class GRPOLearner(LMLearner):
    config: GRPOConfig

    def prepare(self, data: TensorBatch) -> TensorBatch:
        """Advantages within each group (N,), and the reference's log-probs (N, C) when
        the KL is a loss term."""
        c, mask = self.config, data["completion_mask"]
        s = c.loss_settings(mask.shape[1])
        rewards = data["rewards"]
        if s.overlong_buffer:  # the length against the budget: the whole completion region (replies too)
            length = data["attention_mask"][:, -mask.shape[1]:].sum(1)
            rewards = rewards + overlong_penalty(length, max_tokens=mask.shape[1], buffer=s.overlong_buffer,
                                                 factor=s.overlong_penalty)
        ref = self.reference_logprobs(data)
        if ref is not None and s.kl_mode == "reward":
            rewards = rewards - c.kl_coef * kl_reward_penalty(data["logprobs"], ref, mask)
        advantages = group_advantages(rewards, c.group_size, normalize_std=False)
        if s.advantage_std:
            # divided by the spread of the task's rewards, not of the KL-shaped ones: a group whose
            # completions all scored the same keeps its small KL differences small
            spread = data["rewards"].reshape(-1, c.group_size).std(-1, unbiased=False)
            scale = torch.where(spread > 0, spread + 1e-6, torch.ones_like(spread))
            advantages = (advantages.reshape(-1, c.group_size) / scale[:, None]).reshape(-1)
        out = {**data, "advantages": advantages}
        if ref is not None and s.kl_mode == "loss":
            out["ref_logprobs"] = ref
        if c.tis_cap is not None:  # the policy as training on this batch starts (TIS clips against it)
            with torch.no_grad():
                out["start_logprobs"] = self.module.token_logprobs(data["sequences"],
                                                                   data["attention_mask"])[:, -mask.shape[1]:]
        return out

    def compute_loss(self, batch: TensorBatch) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        c, mask = self.config, batch["completion_mask"]
        s = c.loss_settings(mask.shape[1])
        logp = self.module.token_logprobs(batch["sequences"], batch["attention_mask"])[:, -mask.shape[1]:]  # (b, C)
        den = Denominators(tokens=self.mean_count(mask.sum()),
                           sequences=self.mean_count(torch.tensor(float(mask.shape[0]), device=mask.device)),
                           max_tokens=mask.shape[1])
        sampler, old, weights = batch["logprobs"], batch["logprobs"], None
        if c.tis_cap is not None:  # decoupled: clip against the start policy, weight by start / sampler
            old = batch["start_logprobs"]
            weights = (old - sampler).exp().clamp(max=c.tis_cap)
        loss, metrics = grpo_loss(logp, old, batch.get("ref_logprobs"), batch["advantages"], mask,
                                  clip_param=s.clip_low, clip_param_high=s.clip_high, kl_coef=c.kl_coef,
                                  aggregation=s.aggregation, ratio_level=s.ratio_level, denominators=den,
                                  token_weights=weights)
        # the training policy's log-probs from this very forward pass against the sampler's
        return loss, {**metrics, **importance_metrics(logp.detach(), sampler, mask, den)}

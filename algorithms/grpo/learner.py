"""GRPO's learner: group-relative advantages and reference log-probs per batch, then the
clipped token-level loss with the KL term on every minibatch."""

from __future__ import annotations

import torch

from rlfleet.algorithms.grpo.config import GRPOConfig
from rlfleet.algorithms.grpo.loss import group_advantages, grpo_loss
from rlfleet.rl.learner import TensorBatch
from rlfleet.rl.lm.learner import LMLearner


class GRPOLearner(LMLearner):
    config: GRPOConfig

    def prepare(self, data: TensorBatch) -> TensorBatch:
        """Advantages within each group (N,), and the reference's log-probs (N, C)."""
        out = {**data, "advantages": group_advantages(data["rewards"], self.config.group_size)}
        ref = self.reference_logprobs(data)
        if ref is not None:
            out["ref_logprobs"] = ref
        return out

    def compute_loss(self, batch: TensorBatch) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        c = self.config
        n_new = batch["completion_mask"].shape[1]
        logp = self.module.token_logprobs(batch["sequences"], batch["attention_mask"])[:, -n_new:]  # (b, C)
        return grpo_loss(logp, batch["logprobs"], batch.get("ref_logprobs"), batch["advantages"],
                         batch["completion_mask"], clip_param=c.clip_param, kl_coef=c.kl_coef,
                         token_count=self.mean_count(batch["completion_mask"].sum()))

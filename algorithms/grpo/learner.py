"""GRPO's learner: the policy, a frozen reference copy, and the supervised warm-up."""

from __future__ import annotations

import copy
from typing import Any

import numpy as np
import torch

from rlfleet.algorithms.grpo.config import GRPOConfig
from rlfleet.algorithms.grpo.loss import group_advantages, grpo_loss
from rlfleet.rl.batch import SampleBatch
from rlfleet.rl.lm.gpt import GPTConfig
from rlfleet.rl.learner import Learner, TensorBatch
from rlfleet.rl.optim import Adam


class GRPOLearner(Learner):
    def __init__(self, *, module_spec: GPTConfig, config: GRPOConfig) -> None:
        super().__init__(module_spec=module_spec, config=config)
        self.reference: torch.nn.Module | None = None

    def freeze_reference(self) -> None:
        """The KL anchor: the policy as RL starts (after the warm-up)."""
        if self.config.kl_coef > 0:
            self.reference = copy.deepcopy(self.module).eval().requires_grad_(False)

    def warmup(self, sequences: np.ndarray, attention_mask: np.ndarray, loss_mask: np.ndarray, steps: int) -> float:
        """Supervised next-token training on (prompt, answer) sequences; the loss covers the
        answer tokens only (``loss_mask`` (N, L-1) over next-token positions)."""
        c = self.config
        opt = Adam(self.module.parameters(), lr=c.warmup_lr, eps=1e-8)
        data = self.to_tensors({"seq": sequences, "attn": attention_mask, "mask": loss_mask})
        loss = torch.zeros(())
        for _ in range(steps):
            idx = torch.from_numpy(self.rng.integers(0, len(sequences), c.warmup_batch_size)).to(self.device)
            lp = self.module.token_logprobs(data["seq"][idx], data["attn"][idx])  # (b, L-1)
            mask = data["mask"][idx].float()
            loss = -(lp * mask).sum() / mask.sum().clamp(min=1.0)
            opt.zero_grad()
            loss.backward()
            torch.nn.utils.clip_grad_norm_(self.module.parameters(), 1.0)
            opt.step()
        return float(loss.detach())

    def compute_loss(self, batch: TensorBatch) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        c = self.config
        n_new = batch["completion_mask"].shape[1]
        logp = self.module.token_logprobs(batch["sequences"], batch["attention_mask"])[:, -n_new:]  # (b, C)
        return grpo_loss(logp, batch["logprobs"], batch.get("ref_logprobs"), batch["advantages"],
                         batch["completion_mask"], clip_param=c.clip_param, kl_coef=c.kl_coef)

    def update_from_completions(self, batch: SampleBatch, env_steps: int) -> dict[str, float]:
        """Group-relative advantages, reference log-probs, then clipped minibatch steps."""
        c = self.config
        self.optimizer.lr = self.current_lr(env_steps)
        data = self.to_tensors(batch)
        data["advantages"] = group_advantages(data["rewards"], c.group_size)  # (N,)
        if self.reference is not None:
            with torch.no_grad():
                n_new = data["completion_mask"].shape[1]
                data["ref_logprobs"] = self.reference.token_logprobs(data["sequences"], data["attention_mask"])[:, -n_new:]
        return self.train_epochs(data, num_epochs=c.num_epochs, minibatch_size=c.minibatch_size)

    def get_state(self) -> dict[str, Any]:
        state = super().get_state()
        if self.reference is not None:
            state["reference"] = {k: v.detach().cpu().clone() for k, v in self.reference.state_dict().items()}
        return state

    def set_state(self, state: dict[str, Any]) -> None:
        super().set_state(state)
        if "reference" in state:
            self.freeze_reference()
            self.reference.load_state_dict(state["reference"])

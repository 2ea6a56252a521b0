"""PPO for language-model post-training (Ouyang et al. 2022, as RLHF does it): a value
head on the policy, the KL penalty to the frozen reference folded into per-token rewards,
GAE over the completion's tokens, and PPO's clipped loss on every completion token.

It reuses GRPO's driver (generator runners, warm-up, reference, evaluation, completions)
and replaces only the learner's update.
"""

from __future__ import annotations

import dataclasses
import numpy as np
import torch

from rlfleet.algorithms.grpo.algorithm import GRPO
from rlfleet.algorithms.grpo.config import GRPOConfig
from rlfleet.algorithms.grpo.learner import GRPOLearner
from rlfleet.algorithms.grpo.loss import masked_mean
from rlfleet.algorithms.ppo.learner import ppo_loss
from rlfleet.rl.batch import SampleBatch
from rlfleet.rl.config import ConfigError
from rlfleet.rl.lm.causal_lm import next_token_entropy, next_token_logprobs
from rlfleet.rl.lm.gpt import GPTConfig
from rlfleet.rl.learner import TensorBatch
from rlfleet.rl.postprocessing import compute_gae


@dataclasses.dataclass
class LMPPOConfig(GRPOConfig):
    algo_name = "ppo"

    group_size: int = 2
    """Completions per prompt (PPO needs no groups; 2 keeps prompts reused a little)."""
    gae_lambda: float = 0.95
    """GAE lambda over tokens (gamma is 1 within a completion)."""
    vf_coef: float = 0.5
    """Weight of the value loss."""
    entropy_coef: float = 0.0
    """Weight of the entropy bonus."""
    kl_coef: float = 0.05
    """Per-token KL penalty folded into the rewards."""

    def validate(self) -> None:
        super().validate()
        if not 0.0 <= self.gae_lambda <= 1.0:
            raise ConfigError(f"gae_lambda must be in [0, 1], got {self.gae_lambda}")

    def algorithm_class(self) -> type:
        return LMPPO


def token_rewards(rewards: np.ndarray, old_logp: np.ndarray, ref_logp: np.ndarray, mask: np.ndarray,
                  kl_coef: float) -> np.ndarray:
    """(N, C) per-token rewards: -kl_coef * (log pi_old - log ref) on every completion token,
    plus the completion's reward on its last token."""
    out = -kl_coef * (old_logp - ref_logp) * mask  # (N, C)
    last = mask.sum(1).astype(int) - 1  # index of each completion's last token
    rows = np.flatnonzero(last >= 0)
    out[rows, last[rows]] += rewards[rows]
    return out


class LMPPOLearner(GRPOLearner):
    config: LMPPOConfig

    def compute_loss(self, batch: TensorBatch) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        c = self.config
        n_new = batch["completion_mask"].shape[1]
        out = self.module(batch["sequences"], batch["attention_mask"])
        logp = next_token_logprobs(out.logits, batch["sequences"], batch["attention_mask"])[:, -n_new:]  # (b, C)
        entropy = next_token_entropy(out.logits, batch["attention_mask"])[:, -n_new:]
        values = out.values[:, -n_new - 1 : -1]  # V of the state before each completion token
        m = batch["completion_mask"].bool()
        loss, metrics = ppo_loss(
            logp[m], batch["logprobs"][m], batch["advantages"][m], values[m], batch["values"][m],
            batch["value_targets"][m], entropy[m], clip_param=c.clip_param, vf_clip_param=None,
            vf_coef=c.vf_coef, entropy_coef=c.entropy_coef, normalize_advantages=False,
        )
        return loss, metrics

    def update_from_completions(self, batch: SampleBatch, env_steps: int) -> dict[str, float]:
        c = self.config
        self.optimizer.lr = self.current_lr(env_steps)
        data = self.to_tensors(batch)
        mask = batch["completion_mask"]
        n_new = mask.shape[1]
        with torch.no_grad():
            values = self.module(data["sequences"], data["attention_mask"]).values[:, -n_new - 1 : -1]  # (N, C)
            ref = (self.reference.token_logprobs(data["sequences"], data["attention_mask"])[:, -n_new:]
                   if self.reference is not None else data["logprobs"])
        values_np = (values * data["completion_mask"]).cpu().numpy()
        rewards = token_rewards(batch["rewards"], batch["logprobs"], ref.cpu().numpy(), mask, c.kl_coef)
        # GAE over tokens, time-major (C, N): the completion ends (terminates) at its last token.
        last = mask.sum(1).astype(int) - 1
        terminated = np.zeros_like(mask, dtype=bool)
        terminated[np.arange(len(last))[last >= 0], last[last >= 0]] = True
        next_values = np.concatenate([values_np[:, 1:], np.zeros((len(mask), 1), np.float32)], 1)
        adv, targets = compute_gae(rewards.T, values_np.T, next_values.T, terminated.T, np.zeros_like(terminated.T),
                                   gamma=1.0, lam=c.gae_lambda)
        adv, targets = adv.T, targets.T  # (N, C)
        valid = mask.astype(bool)
        adv = (adv - adv[valid].mean()) / (adv[valid].std() + 1e-8) * mask
        data.update(self.to_tensors({"advantages": adv.astype(np.float32), "values": values_np,
                                     "value_targets": targets.astype(np.float32)}))
        out = self.train_epochs(data, num_epochs=c.num_epochs, minibatch_size=c.minibatch_size)
        out["kl_to_ref"] = float(masked_mean(data["logprobs"] - ref, data["completion_mask"]))
        return out


class LMPPO(GRPO):
    config: LMPPOConfig
    config_class = LMPPOConfig
    learner_class = LMPPOLearner

    def setup_env(self) -> GPTConfig:
        return dataclasses.replace(super().setup_env(), value_head=True)


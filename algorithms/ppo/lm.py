"""PPO for language-model post-training (Ouyang et al. 2022, as RLHF does it): a value
head on the policy, the KL penalty to the frozen reference folded into per-token rewards,
GAE over the completion's tokens, and PPO's clipped loss on every completion token.

A sibling of GRPO on the LM bases (rl/lm/): its own config, learner and algorithm name
(``lm-ppo`` in checkpoints and logs); ``--algo ppo`` on a text env selects it.
"""

from __future__ import annotations

import dataclasses

import numpy as np
import torch

from rlfleet.algorithms.ppo.learner import ppo_loss
from rlfleet.rl.config import ConfigError
from rlfleet.rl.learner import TensorBatch
from rlfleet.rl.lm.algorithm import LMAlgorithm
from rlfleet.rl.lm.causal_lm import next_token_entropy, next_token_logprobs
from rlfleet.rl.lm.config import LMConfig
from rlfleet.envs.text import MultiTurnSpec
from rlfleet.rl.lm.generator import resolve_text_env
from rlfleet.rl.lm.learner import LMLearner
from rlfleet.rl.postprocessing import compute_gae


@dataclasses.dataclass
class LMPPOConfig(LMConfig):
    algo_name = "lm-ppo"

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


class LMPPOLearner(LMLearner):
    config: LMPPOConfig

    def prepare(self, data: TensorBatch) -> TensorBatch:
        """Values (N, C) of the sampling policy, token rewards with the KL penalty, GAE
        over tokens, and advantages normalised over every learner's completion tokens."""
        c = self.config
        mask_t = data["completion_mask"]
        n_new = mask_t.shape[1]
        with torch.no_grad():
            values = self.module(data["sequences"], data["attention_mask"]).values[:, -n_new - 1 : -1] * mask_t  # (N, C)
        ref = self.reference_logprobs(data)
        ref = ref if ref is not None else data["logprobs"]
        mask, values_np = mask_t.cpu().numpy(), values.cpu().numpy()
        rewards = token_rewards(data["rewards"].cpu().numpy(), data["logprobs"].cpu().numpy(), ref.cpu().numpy(),
                                mask, c.kl_coef)
        # GAE over tokens, time-major (C, N): the completion ends (terminates) at its last token.
        last = mask.sum(1).astype(int) - 1
        terminated = np.zeros_like(mask, dtype=bool)
        terminated[np.arange(len(last))[last >= 0], last[last >= 0]] = True
        next_values = np.concatenate([values_np[:, 1:], np.zeros((len(mask), 1), np.float32)], 1)
        adv, targets = compute_gae(rewards.T, values_np.T, next_values.T, terminated.T, np.zeros_like(terminated.T),
                                   gamma=1.0, lam=c.gae_lambda)
        adv_t = torch.as_tensor(adv.T.astype(np.float32), device=self.device)
        return {
            **data,
            "advantages": self.normalize(adv_t, mask_t, unbiased=False),
            "values": values,
            "value_targets": torch.as_tensor(targets.T.astype(np.float32), device=self.device),
            "ref_logprobs": ref,
        }

    def compute_loss(self, batch: TensorBatch) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        c = self.config
        n_new = batch["completion_mask"].shape[1]
        out = self.module(batch["sequences"], batch["attention_mask"])
        logp = next_token_logprobs(out.logits, batch["sequences"], batch["attention_mask"])[:, -n_new:]  # (b, C)
        entropy = next_token_entropy(out.logits, batch["attention_mask"])[:, -n_new:]
        values = out.values[:, -n_new - 1 : -1]  # V of the state before each completion token
        m = batch["completion_mask"].bool()
        count = self.mean_count(m.sum())
        loss, metrics = ppo_loss(
            logp[m], batch["logprobs"][m], batch["advantages"][m], values[m], batch["values"][m],
            batch["value_targets"][m], entropy[m], clip_param=c.clip_param, vf_clip_param=None,
            vf_coef=c.vf_coef, entropy_coef=c.entropy_coef, count=count,
        )
        with torch.no_grad():  # mean log-ratio of the sampling policy to the reference
            metrics["kl_to_ref"] = (batch["logprobs"][m] - batch["ref_logprobs"][m]).sum() / count
        return loss, metrics


class LMPPO(LMAlgorithm):
    config: LMPPOConfig
    config_class = LMPPOConfig
    learner_class = LMPPOLearner

    def adapt_module_spec(self, spec: object) -> object:
        if isinstance(resolve_text_env(self.config), MultiTurnSpec):
            # its token rewards and GAE read the completion as one unbroken run of tokens
            raise ConfigError(f"lm-ppo does not train multi-turn envs yet ({self.config.env}); use grpo")
        return dataclasses.replace(spec, value_head=True)

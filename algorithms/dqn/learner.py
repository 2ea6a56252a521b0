"""DQN's loss (double Q-learning, n-step targets, Huber, importance weights) and its learner."""

from __future__ import annotations

import torch

from rlfleet.algorithms.dqn.config import DQNConfig
from rlfleet.rl.models.distributions import mask_logits
from rlfleet.rl.learner import TensorBatch
from rlfleet.rl.models.module import legal_actions
from rlfleet.rl.replay.loop import OffPolicyLearner


def dqn_loss(
    q_taken: torch.Tensor,
    q_next_target: torch.Tensor,
    q_next_online: torch.Tensor | None,
    rewards: torch.Tensor,
    discounts: torch.Tensor,
    weights: torch.Tensor,
    *,
    huber_delta: float,
    next_legal: torch.Tensor | None = None,
) -> tuple[torch.Tensor, torch.Tensor, dict[str, torch.Tensor]]:
    """q_taken (N,) is Q(s_t, a_t); q_next_* (N, A) are Q(s_{t+n}, .); rewards (N,) are
    n-step discounted sums; discounts (N,) are gamma^n, or 0 after a termination;
    next_legal (N, A) bool, where the env masks actions, are the legal actions of s'.

    target = r + discount * Q_target(s', argmax_a Q_online(s', a))   (double Q-learning)
    target = r + discount * max_a Q_target(s', a)                    (q_next_online None)
    with a ranging over the legal actions of s'; a state with none (a finished game) has
    no future value. Returns (loss, TD errors (N,) for new priorities, metrics).
    """
    with torch.no_grad():
        chooser = q_next_online if q_next_online is not None else q_next_target
        if next_legal is not None:
            chooser = mask_logits(chooser, next_legal)
        next_action = chooser.argmax(-1, keepdim=True)  # (N, 1)
        next_q = q_next_target.gather(-1, next_action).squeeze(-1)  # (N,)
        if next_legal is not None:
            next_q = torch.where(next_legal.any(-1), next_q, 0.0)
        target = rewards + discounts * next_q
    td = q_taken - target
    loss = (weights * torch.nn.functional.huber_loss(q_taken, target, reduction="none", delta=huber_delta)).mean()
    metrics = {
        "losses/td_loss": loss.detach(),
        "losses/td_error_abs": td.detach().abs().mean(),
        "losses/q_mean": q_taken.detach().mean(),
    }
    return loss, td.detach(), metrics


class DQNLearner(OffPolicyLearner):
    """One gradient step per replay batch; |TD errors| come back per row for priorities."""

    config: DQNConfig
    per_row_keys = ("td_abs",)

    def compute_loss(self, batch: TensorBatch) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        c = self.config
        q = self.module.forward_train(batch["obs"])  # (N, A)
        q_taken = q.gather(-1, batch["actions"][0].long().unsqueeze(-1)).squeeze(-1)
        with torch.no_grad():
            q_next_target = self.targets["module"].forward_train(batch["next_obs"])
            q_next_online = self.module.forward_train(batch["next_obs"]) if c.double_q else None
        loss, td, metrics = dqn_loss(
            q_taken, q_next_target, q_next_online, batch["rewards"] * c.reward_scale, batch["discounts"], batch["weights"],
            huber_delta=c.huber_delta, next_legal=legal_actions(batch["next_obs"]),
        )
        metrics["td_abs"] = td.abs()  # (N,) per row
        return loss, metrics

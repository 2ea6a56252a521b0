"""DQN's loss (double Q-learning, n-step targets, Huber, importance weights) and its learner."""

from __future__ import annotations

import torch

from rlfleet.algorithms.dqn.config import DQNConfig
from rlfleet.rl.models.distributions import mask_logits
from rlfleet.rl.batch import burn_in_end
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


def sequence_targets(
    rewards: torch.Tensor,
    terminated: torch.Tensor,
    truncated: torch.Tensor,
    valid: torch.Tensor,
    next_q: torch.Tensor,
    *,
    gamma: float,
    n_step: int,
) -> torch.Tensor:
    """n-step targets at every step of N sequences, all (N, W), without gradient; ``next_q``
    is the value of each step's next observation (the chosen action's target Q).

    G_t = sum_{k<m} gamma^k r_{t+k} + gamma^m (1 - terminated_{t+m-1}) next_q_{t+m-1}

    where m <= n_step stops at the first episode end (a truncation bootstraps from its final
    observation, a termination does not) and at the last valid step of the sequence.
    """
    n, w = rewards.shape
    pad = lambda x, k: torch.cat([x[:, k:], torch.zeros_like(x[:, :k])], 1)  # x_{t+k}, 0 past the end
    done = (terminated | truncated).to(rewards.dtype)
    boot = (1.0 - terminated.to(rewards.dtype)) * next_q
    valid = valid.to(rewards.dtype)
    targets = torch.zeros_like(rewards)
    reach = valid.clone()  # step t + k is summed: valid, and no episode end before it
    for k in range(n_step):
        last = reach * torch.clamp(pad(done, k) + (1.0 - pad(valid, k + 1)) + float(k == n_step - 1), max=1.0)
        targets = targets + reach * gamma**k * pad(rewards, k) + last * gamma ** (k + 1) * pad(boot, k)
        reach = reach * (1.0 - pad(done, k)) * pad(valid, k + 1)
    return targets


class DQNLearner(OffPolicyLearner):
    """One gradient step per replay batch; |TD errors| come back per row for priorities."""

    config: DQNConfig
    per_row_keys = ("td_abs",)

    def compute_loss(self, batch: TensorBatch) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        c = self.config
        if c.memory:
            return self.sequence_loss(batch)
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

    def sequence_loss(self, batch: TensorBatch) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        """R2D2 (Kapturowski et al. 2019): online and target networks unroll each sequence
        from its stored state; double-Q n-step targets; Huber loss on the chunk's own steps.
        A sequence's priority would be 0.9 max + 0.1 mean of its |TD errors| (returned per
        row; the sequence buffer samples uniformly so far)."""
        c = self.config
        q, states = self.module.sequence_q(batch["obs"], batch["state_in"], batch["is_first"],
                                           cut=burn_in_end(batch["loss_mask"]))  # (N, W, A)
        q_taken = q.gather(-1, batch["actions"][0].long().unsqueeze(-1)).squeeze(-1)  # (N, W)
        with torch.no_grad():
            target = self.targets["module"]
            _, target_states = target.sequence_q(batch["obs"], batch["state_in"], batch["is_first"])
            q_next_target = target.next_q(batch["next_obs"], target_states)  # (N, W, A)
            chooser = self.module.next_q(batch["next_obs"], states) if c.double_q else q_next_target
            legal = legal_actions(batch["next_obs"])
            if legal is not None:
                chooser = mask_logits(chooser, legal)
            next_q = q_next_target.gather(-1, chooser.argmax(-1, keepdim=True)).squeeze(-1)
            if legal is not None:  # a state with no legal action (a finished game) has no future value
                next_q = torch.where(legal.any(-1), next_q, 0.0)
            targets = sequence_targets(batch["rewards"] * c.reward_scale, batch["terminated"], batch["truncated"],
                                       batch["valid"], next_q, gamma=c.gamma, n_step=c.n_step)
        mask = batch["loss_mask"]
        count = self.mean_count(mask.sum())
        huber = torch.nn.functional.huber_loss(q_taken, targets, reduction="none", delta=c.huber_delta)
        loss = (huber * mask).sum() / count
        td = (q_taken.detach() - targets).abs() * mask
        metrics = {
            "losses/td_loss": loss.detach(),
            "losses/td_error_abs": td.sum() / count,
            "losses/q_mean": (q_taken.detach() * mask).sum() / count,
            "td_abs": 0.9 * td.max(-1).values + 0.1 * td.sum(-1) / mask.sum(-1).clamp(min=1.0),  # (N,)
        }
        return loss, metrics

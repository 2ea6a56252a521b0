"""SAC's losses (twin critics, entropy-regularised targets, the temperature) and its learner,
with three optimiser groups: actor, critic, alpha."""

from __future__ import annotations

import math

import torch
from gymnasium import spaces

from rlfleet.algorithms.sac.config import SACConfig
from rlfleet.rl.learner import TensorBatch
from rlfleet.rl.models.module import legal_actions
from rlfleet.rl.replay.loop import OffPolicyLearner


def sac_losses(
    q: list[torch.Tensor],
    target: torch.Tensor,
    weights: torch.Tensor,
    q_pi: torch.Tensor,
    logp_pi: torch.Tensor,
    log_alpha: torch.Tensor,
    *,
    target_entropy: float,
) -> tuple[dict[str, torch.Tensor], torch.Tensor, dict[str, torch.Tensor]]:
    """q: each critic's Q(s_t, a_t) (N,); target (N,): r + discount * (min_i Q'_i(s', a') -
    alpha log pi(a'|s')), a' ~ pi, computed without gradients; weights (N,): importance
    weights of prioritised replay (ones otherwise); q_pi (N,): min_i Q_i(s, a~pi) with
    gradients to the actor; logp_pi (N,): log pi(a~pi|s) (for discrete actions both are
    expectations over pi, sum_a pi(a|s) ...).

    critic = 1/2 sum_i mean(w (Q_i - target)^2)          (SB3's sum of the critics' MSEs)
    actor  = mean(alpha logp_pi - q_pi)                     (alpha held fixed)
    alpha  = -mean(log_alpha (logp_pi + target_entropy))    (logp_pi held fixed)
    Returns ({group: loss}, |TD error| (N,) averaged over the critics, metrics).
    """
    alpha = log_alpha.exp().detach()
    critic = 0.5 * sum((weights * (qi - target).pow(2)).mean() for qi in q)
    actor = (alpha * logp_pi - q_pi).mean()
    alpha_loss = -(log_alpha * (logp_pi.detach() + target_entropy)).mean()
    td_abs = torch.stack([(qi - target).detach().abs() for qi in q]).mean(0)
    metrics = {
        "losses/critic_loss": critic.detach(),
        "losses/actor_loss": actor.detach(),
        "losses/alpha_loss": alpha_loss.detach(),
        "losses/alpha": alpha,
        "losses/entropy": -logp_pi.detach().mean(),
        "losses/q_mean": q[0].detach().mean(),
    }
    return {"critic": critic, "actor": actor, "alpha": alpha_loss}, td_abs, metrics


def _policy(logits: torch.Tensor, legal: torch.Tensor | None) -> tuple[torch.Tensor, torch.Tensor]:
    """pi(.|s) and log pi(.|s), each (N, A); the log-prob of an illegal action (probability
    0) is set to 0: its masked logit gives one near the float minimum, which an expectation
    over pi would multiply into overflow, in the value and in the gradient alike."""
    logp = logits.log_softmax(-1)
    return logp.exp(), (logp if legal is None else torch.where(legal, logp, 0.0))


class SACLearner(OffPolicyLearner):
    config: SACConfig
    per_row_keys = ("td_abs",)


    def parameter_groups(self) -> dict[str, list[torch.nn.Parameter]]:
        m = self.module
        return {"actor": m.actor_parameters(), "critic": list(m.critics.parameters()), "alpha": [m.log_alpha]}

    def make_targets(self) -> dict[str, torch.nn.Module]:
        return {"critics": self.module.critics}

    @property
    def target_entropy(self) -> float:
        if self.config.target_entropy is not None:
            return float(self.config.target_entropy)
        space = self.module.spec.action_space
        if isinstance(space, spaces.Discrete):
            return 0.89 * math.log(int(space.n))
        return -float(space.shape[0])

    def compute_loss(self, batch: TensorBatch) -> tuple[dict[str, torch.Tensor], dict[str, torch.Tensor]]:
        m, c = self.module, self.config
        obs, next_obs, actions = batch["obs"], batch["next_obs"], batch["actions"][0]
        alpha = m.log_alpha.exp().detach()
        with torch.no_grad():
            if m.discrete:
                probs_next, logp_next = _policy(m.actor_out(next_obs), legal_actions(next_obs))  # (N, A)
                q_next = torch.min(*m.q_values(next_obs, critics=self.targets["critics"]))  # (N, A)
                v_next = (probs_next * (q_next - alpha * logp_next)).sum(-1)
            else:
                a_next, logp_next = m.sample(next_obs, self.batch_noise(len(actions), actions.shape[-1]))
                v_next = torch.min(*m.q_values(next_obs, a_next, self.targets["critics"])) - alpha * logp_next
            target = batch["rewards"] * c.reward_scale + batch["discounts"] * v_next  # (N,)
        if m.discrete:
            q_all = m.q_values(obs)  # each (N, A)
            q = [qa.gather(-1, actions.long().unsqueeze(-1)).squeeze(-1) for qa in q_all]
            probs, logp_all = _policy(m.actor_out(obs), legal_actions(obs))
            # expectations over pi; the critics' values held fixed (the actor's gradient only)
            q_pi = (probs * torch.min(*q_all).detach()).sum(-1)
            logp_pi = (probs * logp_all).sum(-1)
        else:
            q = m.q_values(obs, m.from_env(actions))
            a_pi, logp_pi = m.sample(obs, self.batch_noise(len(actions), actions.shape[-1]))
            q_pi = torch.min(*m.q_values(obs, a_pi, frozen=True))
        losses, td_abs, metrics = sac_losses(q, target, batch["weights"], q_pi, logp_pi, m.log_alpha,
                                             target_entropy=self.target_entropy)
        if not c.autotune_alpha:
            del losses["alpha"]
        metrics["td_abs"] = td_abs
        return losses, metrics

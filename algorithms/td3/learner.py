"""TD3's critic loss and its learner: two optimiser groups (actor, critic), the actor and
the targets stepping once per ``target_update_interval`` critic steps."""

from __future__ import annotations

import torch

from rlfleet.algorithms.td3.config import TD3Config
from rlfleet.rl.models.critics import frozen
from rlfleet.rl.learner import TensorBatch
from rlfleet.rl.replay.loop import OffPolicyLearner


def td3_critic_loss(
    q: list[torch.Tensor], target: torch.Tensor, weights: torch.Tensor,
) -> tuple[torch.Tensor, torch.Tensor]:
    """q: each critic's Q(s_t, a_t) (N,); target (N,): r + discount * min_i Q'_i(s', a'),
    a' the target actor's smoothed action; weights (N,) from prioritised replay.
    Returns (sum_i mean(w (Q_i - target)^2), |TD error| (N,) averaged over the critics)."""
    loss = sum((weights * (qi - target).pow(2)).mean() for qi in q)
    return loss, torch.stack([(qi - target).detach().abs() for qi in q]).mean(0)


class TD3Learner(OffPolicyLearner):
    config: TD3Config
    per_row_keys = ("td_abs",)

    def parameter_groups(self) -> dict[str, list[torch.nn.Parameter]]:
        return {"actor": list(self.module.actor.parameters()), "critic": list(self.module.critics.parameters())}

    def make_targets(self) -> dict[str, torch.nn.Module]:
        return {"actor": self.module.actor, "critics": self.module.critics}

    def compute_loss(self, batch: TensorBatch) -> tuple[dict[str, torch.Tensor], dict[str, torch.Tensor]]:
        m, c = self.module, self.config
        obs, next_obs, actions = batch["obs"], batch["next_obs"], batch["actions"][0]
        with torch.no_grad():
            noise = (c.target_policy_noise * self.batch_noise(len(actions), actions.shape[-1]))
            noise = noise.clamp(-c.target_noise_clip, c.target_noise_clip)
            a_next = (self.targets["actor"](next_obs) + noise).clamp(-1.0, 1.0)
            q_next = torch.min(*[critic(next_obs, a_next) for critic in self.targets["critics"]])
            target = batch["rewards"] * c.reward_scale + batch["discounts"] * q_next  # (N,)
        q = [critic(obs, m.bounds.from_env(actions)) for critic in m.critics]
        critic_loss, td_abs = td3_critic_loss(q, target, batch["weights"])
        # the actor climbs the first critic, whose weights it holds fixed
        actor_loss = -frozen(m.critics[0], obs, m.actor(obs)).mean()
        losses = {"critic": critic_loss}
        if (self.num_grad_steps + 1) % c.target_update_interval == 0:  # delayed: with the targets
            losses["actor"] = actor_loss
        metrics = {"losses/critic_loss": critic_loss.detach(), "losses/actor_loss": actor_loss.detach(),
                   "losses/q_mean": q[0].detach().mean(), "td_abs": td_abs}
        return losses, metrics

"""IMPALA's loss: V-trace policy gradient, value regression to the V-trace targets,
entropy bonus (Espeholt et al. 2018, section 4.2)."""

from __future__ import annotations

from typing import Any

import torch
import tree

from rlfleet.algorithms.impala.config import IMPALAConfig
from rlfleet.rl.batch import SampleBatch
from rlfleet.rl.learner import Learner, TensorBatch
from rlfleet.rl.postprocessing import vtrace


def impala_loss(
    target_logp: torch.Tensor,
    values: torch.Tensor,
    entropy: torch.Tensor,
    vs: torch.Tensor,
    pg_advantages: torch.Tensor,
    *,
    vf_coef: float,
    entropy_coef: float,
) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """All (T, B); ``vs`` and ``pg_advantages`` come from V-trace, without gradient."""
    policy_loss = -(pg_advantages * target_logp).mean()
    value_loss = 0.5 * (values - vs).pow(2).mean()
    entropy_mean = entropy.mean()
    loss = policy_loss + vf_coef * value_loss - entropy_coef * entropy_mean
    metrics = {
        "losses/policy_loss": policy_loss.detach(),
        "losses/value_loss": value_loss.detach(),
        "losses/entropy": entropy_mean.detach(),
    }
    return loss, metrics


def _rows(x: torch.Tensor) -> torch.Tensor:
    return x.reshape(x.shape[0] * x.shape[1], *x.shape[2:])  # (T, B, ...) -> (T*B, ...)


class IMPALALearner(Learner):
    config: IMPALAConfig

    def compute_loss(self, batch: TensorBatch) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        """``batch`` is time-major (T, B), plus ``bootstrap_obs`` (1, B, ...) and the
        truncations' final observations ``final_obs`` (K, ...) at ``final_tb`` (K, 2)."""
        c = self.config
        T, B = batch["rewards"].shape
        dist, values = self.module.forward_train(tree.map_structure(_rows, batch["obs"]))
        target_logp = dist.logp([_rows(a) for a in batch["actions"]]).reshape(T, B)
        values = values.reshape(T, B)
        with torch.no_grad():
            # V of the true next state under the current weights: the next step's value, the
            # bootstrap observation after the last step, the final observation at truncations.
            next_values = torch.cat([values[1:], self.module.compute_values(tree.map_structure(lambda x: x[0], batch["bootstrap_obs"]))[None]])
            if batch["final_tb"].shape[0]:
                t, b = batch["final_tb"][:, 0], batch["final_tb"][:, 1]
                next_values[t, b] = self.module.compute_values(batch["final_obs"])
        vs, pg_advantages = vtrace(
            batch["logp"], target_logp.detach(), batch["rewards"] * c.reward_scale, values.detach(), next_values,
            batch["terminated"], batch["truncated"],
            gamma=c.gamma, rho_bar=c.vtrace_rho_bar, c_bar=c.vtrace_c_bar,
        )
        loss, metrics = impala_loss(
            target_logp, values, dist.entropy().reshape(T, B), vs, pg_advantages,
            vf_coef=c.vf_coef, entropy_coef=c.entropy_coef,
        )
        with torch.no_grad():
            metrics["losses/mean_rho"] = (target_logp - batch["logp"]).exp().clamp(max=c.vtrace_rho_bar).mean()
        return loss, metrics

    def update_from_fragments(self, batch: SampleBatch, env_steps: int) -> dict[str, float]:
        """``num_epochs`` gradient steps on one time-major batch."""
        self.optimizer.lr = self.current_lr(env_steps)
        data = self.to_tensors(batch)
        sums: dict[str, float] = {}
        for _ in range(self.config.num_epochs):
            for k, v in self.gradient_step(data).items():
                sums[k] = sums.get(k, 0.0) + float(v)
        return {k: v / self.config.num_epochs for k, v in sums.items()}

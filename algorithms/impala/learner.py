"""IMPALA's loss: V-trace policy gradient, value regression to the V-trace targets,
entropy bonus (Espeholt et al. 2018, section 4.2)."""

from __future__ import annotations

from typing import Iterator

import torch
import tree

from rlfleet.algorithms.impala.config import IMPALAConfig
from rlfleet.rl.batch import flatten_time
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
    count: torch.Tensor | float | None = None,
) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """All (T, B); ``vs`` and ``pg_advantages`` come from V-trace, without gradient.
    Sums divided by ``count`` (default: the number of steps): with several learners, the
    all-reduced count over the learners, so a learner whose share is empty (a policy with
    fewer envs than learners) adds zero gradients instead of a mean over nothing."""
    n = count if count is not None else float(values.numel())
    policy_loss = -(pg_advantages * target_logp).sum() / n
    value_loss = 0.5 * (values - vs).pow(2).sum() / n
    entropy_mean = entropy.sum() / n
    loss = policy_loss + vf_coef * value_loss - entropy_coef * entropy_mean
    metrics = {
        "losses/policy_loss": policy_loss.detach(),
        "losses/value_loss": value_loss.detach(),
        "losses/entropy": entropy_mean.detach(),
    }
    return loss, metrics


def _swap(x: torch.Tensor) -> torch.Tensor:
    return x.transpose(0, 1)  # (T, B, ...) <-> (B, T, ...)


class IMPALALearner(Learner):
    config: IMPALAConfig

    def compute_loss(self, batch: TensorBatch) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        """``batch`` is time-major (T, B), plus ``bootstrap_obs`` (1, B, ...) and the
        truncations' final observations ``final_obs`` (K, ...) at ``final_tb`` (K, 2)."""
        c = self.config
        T, B = batch["rewards"].shape
        target_logp, values, entropy, next_values = self.forward(batch)
        vs, pg_advantages = vtrace(
            batch["logp"], target_logp.detach(), batch["rewards"] * c.reward_scale, values.detach(), next_values,
            batch["terminated"], batch["truncated"],
            gamma=c.gamma, rho_bar=c.vtrace_rho_bar, c_bar=c.vtrace_c_bar,
        )
        count = self.mean_count(torch.tensor(T * B, device=values.device))
        loss, metrics = impala_loss(
            target_logp, values, entropy, vs, pg_advantages,
            vf_coef=c.vf_coef, entropy_coef=c.entropy_coef, count=count,
        )
        with torch.no_grad():
            metrics["losses/mean_rho"] = (target_logp - batch["logp"]).exp().clamp(max=c.vtrace_rho_bar).sum() / count
        return loss, metrics

    def forward(self, batch: TensorBatch) -> tuple[torch.Tensor, ...]:
        """(target log-probs, values, entropies, V of the true next state without
        gradient), each (T, B). V of the next state under the current weights: the next
        step's value, the bootstrap observation's after the last step, the final
        observation's at truncations. With memory, each env's fragment runs through the
        core in one pass, restarting from the stored state every ``max_seq_len`` steps."""
        T, B = batch["rewards"].shape
        bootstrap = tree.map_structure(lambda x: x[0], batch["bootstrap_obs"])
        t, b = batch["final_tb"][:, 0], batch["final_tb"][:, 1]
        if not self.config.memory:
            dist, values = self.module.forward_train(flatten_time(batch["obs"]))
            target_logp = dist.logp(flatten_time(batch["actions"])).reshape(T, B)
            values, entropy = values.reshape(T, B), dist.entropy().reshape(T, B)
            with torch.no_grad():
                last = self.module.compute_values(bootstrap)
                final = self.module.compute_values(batch["final_obs"]) if len(t) else None
        else:
            stored = _swap(batch["state_in"])  # (B, T, S)
            rows, feats, states = self.module.sequence_features(
                tree.map_structure(_swap, batch["obs"]), stored[:, 0], _swap(batch["is_first"]),
                stored=stored, restart_every=self.config.max_seq_len)  # rows in (b, t) order
            dist = self.module.dist(self.module.dist_inputs(feats), rows)
            target_logp = _swap(dist.logp(flatten_time([_swap(a) for a in batch["actions"]])).reshape(B, T))
            values = _swap(self.module.values(feats).reshape(B, T))
            entropy = _swap(dist.entropy().reshape(B, T))
            with torch.no_grad():
                states = _swap(states)  # (T, B, S): the state after each step
                last = self.module.compute_values(bootstrap, states[-1])
                final = self.module.compute_values(batch["final_obs"], states[t, b]) if len(t) else None
        with torch.no_grad():
            next_values = torch.cat([values[1:].detach(), last[None]])
            if final is not None:
                next_values[t, b] = final
        return target_logp, values, entropy, next_values

    def minibatches(self, data: TensorBatch) -> Iterator[TensorBatch]:
        """``num_epochs`` gradient steps on the whole time-major batch; with several
        learners each takes an equal share of the envs, whole through time."""
        part = env_shard(data, self.rank, self.world_size)
        for _ in range(self.config.num_epochs):
            yield part


def env_shard(batch: TensorBatch, rank: int, world_size: int) -> TensorBatch:
    """Envs ``[rank * B/n, (rank + 1) * B/n)`` of a time-major batch (T, B, ...), with the
    truncations' final observations that fall in them (their env index re-based)."""
    if world_size == 1:
        return batch
    B = batch["rewards"].shape[1]
    lo, hi = rank * B // world_size, (rank + 1) * B // world_size
    out = {k: tree.map_structure(lambda x: x[:, lo:hi], v) for k, v in batch.items() if k not in ("final_tb", "final_obs")}
    tb = batch["final_tb"]
    keep = (tb[:, 1] >= lo) & (tb[:, 1] < hi)
    out["final_tb"] = tb[keep] - torch.tensor([0, lo], dtype=tb.dtype, device=tb.device)
    out["final_obs"] = tree.map_structure(lambda x: x[keep], batch["final_obs"])
    return out

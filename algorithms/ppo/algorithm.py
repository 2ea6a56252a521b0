"""PPO's training step: sample, GAE, minibatch epochs, broadcast."""

from __future__ import annotations

from rlfleet.algorithms.ppo.config import PPOConfig
from rlfleet.algorithms.ppo.learner import PPOLearner
from rlfleet.rl.algorithm import Algorithm
from rlfleet.rl.batch import concat_batches, flatten_time, to_sequences
from rlfleet.rl.runners.env_runner import control_runner_factory
from rlfleet.rl.postprocessing import compute_gae


class PPO(Algorithm):
    config: PPOConfig
    config_class = PPOConfig
    learner_class = PPOLearner
    runner_factory_class = control_runner_factory

    def training_step(self) -> dict[str, float]:
        fragments = self.sample()
        if not fragments:  # every runner failed this time; they were restarted
            return {}
        if isinstance(self.module_spec, dict):  # multi-agent: a batch per policy
            batches = {pid: self.rows([f.batch[pid] for f in fragments if pid in f.batch]) for pid in self.module_spec}
            result = self.learner_group.update({pid: b for pid, b in batches.items() if b}, env_steps=self.env_steps)
        else:
            result = self.learner_group.update(self.rows([f.batch for f in fragments]), env_steps=self.env_steps)
        self.sync_weights()
        return result.metrics

    def rows(self, fragments: list[dict]) -> dict:
        """Fragments (T, B) of one policy -> GAE -> rows (N = T * B) for the learner."""
        if not fragments:
            return {}
        c = self.config
        keys = ("obs", "actions", "logp", "values", "next_values", "rewards", "terminated", "truncated")
        if c.memory:
            keys += ("is_first", "state_in")
        batch = concat_batches([{k: f[k] for k in keys} for f in fragments])  # (T, B_total)
        batch["advantages"], batch["value_targets"] = compute_gae(
            batch["rewards"] * c.reward_scale,
            batch["values"],
            batch["next_values"],
            batch["terminated"],
            batch["truncated"],
            gamma=c.gamma,
            lam=c.gae_lambda,
        )
        keys = ("obs", "actions", "logp", "values", "advantages", "value_targets")
        if c.memory:  # whole chunks of max_seq_len steps (N, W, ...), never cut through
            return to_sequences({k: batch[k] for k in (*keys, "is_first", "state_in")},
                                max_seq_len=c.max_seq_len, burn_in=c.burn_in)
        return flatten_time({k: batch[k] for k in keys})

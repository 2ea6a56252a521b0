"""PPO's training step: sample, GAE, minibatch epochs, broadcast."""

from __future__ import annotations

from rlfleet.algorithms.ppo.config import PPOConfig
from rlfleet.algorithms.ppo.learner import PPOLearner
from rlfleet.rl.algorithm import Algorithm
from rlfleet.rl.batch import concat_batches, flatten_time
from rlfleet.rl.env_runner import EnvRunnerFactory
from rlfleet.rl.postprocessing import compute_gae


class PPO(Algorithm):
    config: PPOConfig
    config_class = PPOConfig
    learner_class = PPOLearner
    runner_factory_class = EnvRunnerFactory

    def training_step(self) -> dict[str, float]:
        c = self.config
        fragments = self.sample()
        if not fragments:  # every runner failed this time; they were restarted
            return {}
        batch = concat_batches([f.batch for f in fragments])  # (T, B_total)
        batch["advantages"], batch["value_targets"] = compute_gae(
            batch["rewards"] * c.reward_scale,
            batch["values"],
            batch["next_values"],
            batch["terminated"],
            batch["truncated"],
            gamma=c.gamma,
            lam=c.gae_lambda,
        )
        rows = flatten_time({k: batch[k] for k in ("obs", "actions", "logp", "values", "advantages", "value_targets")})
        result = self.learner_group.update(rows, env_steps=self.env_steps)
        self.sync_weights()
        return result.metrics

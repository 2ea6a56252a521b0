"""PPO's settings."""

from __future__ import annotations

import dataclasses

from rlfleet.rl.config import ConfigError, ControlConfig


@dataclasses.dataclass
class PPOConfig(ControlConfig):
    algo_name = "ppo"
    external_max_lag = 8  # on-policy: clipping alone cannot correct older data

    gae_lambda: float = 0.95
    """GAE lambda: 0 is one-step TD, 1 is Monte Carlo."""
    clip_param: float = 0.2
    """Clip range of the probability ratio in the surrogate objective."""
    vf_clip_param: float | None = None
    """Clip the value update around the old prediction by this much; None disables."""
    vf_coef: float = 0.5
    """Weight of the value loss."""
    entropy_coef: float = 0.0
    """Weight of the entropy bonus."""
    num_epochs: int = 10
    """Passes over each train batch."""
    minibatch_size: int = 64
    """Rows per gradient step; at most the train batch."""
    normalize_advantages: bool = True
    """Normalise advantages per minibatch (zero mean, unit std)."""

    @property
    def train_batch_size(self) -> int:
        """Rows per iteration: every runner's fragment of every env."""
        return self.num_runners * self.num_envs_per_runner * self.rollout_fragment_length

    def validate(self) -> None:
        super().validate()
        if not 0.0 <= self.gae_lambda <= 1.0:
            raise ConfigError(f"gae_lambda must be in [0, 1], got {self.gae_lambda}")
        self.require_positive("clip_param", "num_epochs")
        if not 0 < self.minibatch_size <= self.train_batch_size:
            raise ConfigError(
                f"minibatch_size {self.minibatch_size} must be in [1, train batch {self.train_batch_size}] "
                f"(= runners {self.num_runners} x envs {self.num_envs_per_runner} "
                f"x fragment {self.rollout_fragment_length})"
            )

        n = max(1, self.num_learners)
        if self.minibatch_size % n:
            raise ConfigError(
                f"minibatch_size {self.minibatch_size} must divide by num_learners {n}: "
                "each learner takes an equal part of every minibatch"
            )

    def algorithm_class(self) -> type:
        from rlfleet.algorithms.ppo.algorithm import PPO

        return PPO

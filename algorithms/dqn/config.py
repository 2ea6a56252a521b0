"""DQN's settings."""

from __future__ import annotations

import dataclasses

from gymnasium import spaces

from rlfleet.rl.config import ConfigError, ControlConfig


@dataclasses.dataclass
class DQNConfig(ControlConfig):
    algo_name = "dqn"
    multi_agent = False  # replay would need a buffer per policy
    action_space_types = (spaces.Discrete,)

    # One set for every family: replay steps short fragments, and its rewards are not rescaled.
    family_defaults = {family: ControlConfig.family_defaults["discrete"] for family in ControlConfig.family_defaults}

    buffer_size: int = 50_000
    """Transitions the replay buffer holds."""
    learning_starts: int = 1_000
    """Env steps collected before the first gradient step."""
    train_batch_size: int = 64
    """Rows per gradient step."""
    replay_ratio: float = 0.5
    """Gradient steps per env step, whatever the number of runners (SB3's CartPole: 128 per 256)."""
    target_update_interval: int = 500
    """Gradient steps between target-network updates."""
    tau: float = 1.0
    """Target update: target <- tau * online + (1 - tau) * target; 1.0 is a hard copy."""
    double_q: bool = True
    """Pick the next action with the online net, value it with the target (van Hasselt et al. 2016)."""
    dueling: bool = False
    """Separate state-value and advantage streams (Wang et al. 2016)."""
    n_step: int = 1
    """Steps summed in the return before bootstrapping."""
    huber_delta: float = 1.0
    """Huber loss threshold on the TD error."""
    epsilon_initial: float = 1.0
    """Exploration rate at the start."""
    epsilon_final: float = 0.05
    """Exploration rate after ``epsilon_timesteps`` env steps."""
    epsilon_timesteps: int = 10_000
    """Env steps over which epsilon decays linearly."""
    prioritized_replay: bool = False
    """Sample transitions by TD error (Schaul et al. 2016)."""
    prioritized_replay_alpha: float = 0.6
    """How strongly priorities skew sampling (0 is uniform)."""
    prioritized_replay_beta: float = 0.4
    """Initial importance-sampling exponent, annealed linearly to 1."""
    prioritized_replay_beta_timesteps: int = 100_000
    """Env steps over which beta reaches 1."""
    frame_stack: int = 1
    """Frames stacked in each observation by the env; the buffer stores single frames."""

    def validate(self) -> None:
        super().validate()
        self.require_positive("buffer_size", "train_batch_size", "target_update_interval", "n_step", "frame_stack",
                              "epsilon_timesteps", "prioritized_replay_beta_timesteps", "replay_ratio")
        if not 0.0 < self.tau <= 1.0:
            raise ConfigError(f"tau must be in (0, 1], got {self.tau}")
        for name in ("epsilon_initial", "epsilon_final"):
            if not 0.0 <= getattr(self, name) <= 1.0:
                raise ConfigError(f"{name} must be in [0, 1], got {getattr(self, name)}")
        if self.train_batch_size > self.buffer_size:
            raise ConfigError(f"train_batch_size {self.train_batch_size} > buffer_size {self.buffer_size}")
        if self.train_batch_size % max(1, self.num_learners):
            raise ConfigError(f"train_batch_size {self.train_batch_size} must divide by num_learners {self.num_learners}: "
                              "each learner takes an equal part of every replay batch")

    def algorithm_class(self) -> type:
        from rlfleet.algorithms.dqn.algorithm import DQN

        return DQN

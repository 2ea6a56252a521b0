"""DQN's settings."""

from __future__ import annotations

import dataclasses

from gymnasium import spaces

from rlfleet.rl.config import ConfigError
from rlfleet.rl.replay.config import OffPolicyConfig


@dataclasses.dataclass
class DQNConfig(OffPolicyConfig):
    algo_name = "dqn"
    action_space_types = (spaces.Discrete,)
    supports_memory = True  # R2D2: sequences with stored states (rl/replay/sequences.py)

    double_q: bool = True
    """Pick the next action with the online net, value it with the target (van Hasselt et al. 2016)."""
    dueling: bool = False
    """Separate state-value and advantage streams (Wang et al. 2016)."""
    huber_delta: float = 1.0
    """Huber loss threshold on the TD error."""
    epsilon_initial: float = 1.0
    """Exploration rate at the start."""
    epsilon_final: float = 0.05
    """Exploration rate after ``epsilon_timesteps`` env steps."""
    epsilon_timesteps: int = 10_000
    """Env steps over which epsilon decays linearly."""

    def validate(self) -> None:
        super().validate()
        self.require_positive("epsilon_timesteps")
        for name in ("epsilon_initial", "epsilon_final"):
            if not 0.0 <= getattr(self, name) <= 1.0:
                raise ConfigError(f"{name} must be in [0, 1], got {getattr(self, name)}")

    def algorithm_class(self) -> type:
        from rlfleet.algorithms.dqn.algorithm import DQN

        return DQN

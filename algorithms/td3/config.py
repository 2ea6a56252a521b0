"""TD3's settings: CleanRL's (the paper's, with 256-wide networks)."""

from __future__ import annotations

import dataclasses

from gymnasium import spaces

from rlfleet.rl.config import ConfigError
from rlfleet.rl.replay.config import ActorCriticReplayConfig


@dataclasses.dataclass
class TD3Config(ActorCriticReplayConfig):
    algo_name = "td3"
    action_space_types = (spaces.Box,)

    target_update_interval: int = 2
    """The policy delay: the actor and every target network step once per this many critic
    steps (the paper's d = 2)."""
    exploration_noise: float = 0.1
    """Std of the Gaussian noise added to the actor's action when acting, as a fraction of
    the half-range of each action dimension."""
    target_policy_noise: float = 0.2
    """Std of the noise on the target actor's action (target policy smoothing)."""
    target_noise_clip: float = 0.5
    """That noise is clipped to +- this."""

    def validate(self) -> None:
        super().validate()
        for name in ("exploration_noise", "target_policy_noise", "target_noise_clip"):
            if getattr(self, name) < 0:
                raise ConfigError(f"{name} must be >= 0, got {getattr(self, name)}")

    def algorithm_class(self) -> type:
        from rlfleet.algorithms.td3.algorithm import TD3

        return TD3

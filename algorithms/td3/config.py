"""TD3's settings: CleanRL's (the paper's, with 256-wide networks)."""

from __future__ import annotations

import dataclasses

from gymnasium import spaces

from rlfleet.rl.config import ConfigError, ControlConfig
from rlfleet.rl.replay.config import OffPolicyConfig


@dataclasses.dataclass
class TD3Config(OffPolicyConfig):
    algo_name = "td3"
    action_space_types = (spaces.Box,)

    # One env per runner, a gradient step per env step, weights broadcast every 64 steps.
    family_defaults = {family: {**ControlConfig.family_defaults["discrete"], "num_envs_per_runner": 1,
                                "rollout_fragment_length": 64} for family in ControlConfig.family_defaults}

    hidden_sizes: tuple[int, ...] = (256, 256)
    activation: str = "relu"
    lr: float = 3e-4
    grad_clip: float | None = None
    buffer_size: int = 1_000_000
    learning_starts: int = 1_000
    minibatch_size: int = 256
    replay_ratio: float = 1.0
    target_update_interval: int = 2
    """The policy delay: the actor and every target network step once per this many critic
    steps (the paper's d = 2)."""
    tau: float = 0.005
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

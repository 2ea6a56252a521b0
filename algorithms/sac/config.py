"""SAC's settings: SB3's defaults for the networks, the optimiser and the targets."""

from __future__ import annotations

import dataclasses

from gymnasium import spaces

from rlfleet.rl.config import ConfigError, ControlConfig
from rlfleet.rl.replay.config import OffPolicyConfig


@dataclasses.dataclass
class SACConfig(OffPolicyConfig):
    algo_name = "sac"
    action_space_types = (spaces.Box, spaces.Discrete)

    # One env per runner, 64 steps per sample call: a gradient step per env step (replay
    # ratio 1) as in SB3 and CleanRL, with weights broadcast every 64 steps rather than
    # every step (the broadcast costs more than a step's acting).
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
    target_update_interval: int = 1
    tau: float = 0.005
    initial_alpha: float = 1.0
    """The entropy temperature at the start (SB3's ``ent_coef="auto"`` starts at 1)."""
    autotune_alpha: bool = True
    """Learn the temperature so that the policy's entropy tracks ``target_entropy``."""
    target_entropy: float | None = None
    """The entropy the temperature aims for (None: -dim(A) for continuous actions, as in
    the paper; 0.89 log |A| for discrete ones, as in CleanRL's discrete SAC)."""

    def validate(self) -> None:
        super().validate()
        if self.initial_alpha <= 0:
            raise ConfigError(f"initial_alpha must be > 0, got {self.initial_alpha}")

    def algorithm_class(self) -> type:
        from rlfleet.algorithms.sac.algorithm import SAC

        return SAC

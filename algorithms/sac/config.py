"""SAC's settings: SB3's defaults for the networks, the optimiser and the targets."""

from __future__ import annotations

import dataclasses

from gymnasium import spaces

from rlfleet.rl.config import ConfigError
from rlfleet.rl.replay.config import ActorCriticReplayConfig


@dataclasses.dataclass
class SACConfig(ActorCriticReplayConfig):
    algo_name = "sac"
    action_space_types = (spaces.Box, spaces.Discrete)

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

"""GRPO's settings (language-model post-training)."""

from __future__ import annotations

import dataclasses

from rlfleet.rl.config import ConfigError
from rlfleet.rl.lm.config import LMConfig


@dataclasses.dataclass
class GRPOConfig(LMConfig):
    algo_name = "grpo"

    group_size: int = 8
    """Completions per prompt; advantages are relative within the group."""

    def validate(self) -> None:
        super().validate()
        if self.group_size < 2:
            raise ConfigError(f"group_size must be >= 2 (advantages are relative within a group), got {self.group_size}")

    def algorithm_class(self) -> type:
        from rlfleet.algorithms.grpo.algorithm import GRPO

        return GRPO

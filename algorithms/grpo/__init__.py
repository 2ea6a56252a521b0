"""GRPO (group-relative policy optimisation) for language-model post-training."""

from rlfleet.algorithms.grpo.algorithm import GRPO
from rlfleet.algorithms.grpo.config import GRPOConfig
from rlfleet.algorithms.grpo.learner import GRPOLearner

__all__ = ["GRPO", "GRPOConfig", "GRPOLearner"]

"""GRPO (group-relative policy optimisation) for language-model post-training."""

from algorithms.grpo.algorithm import GRPO
from algorithms.grpo.config import GRPOConfig
from algorithms.grpo.learner import GRPOLearner

__all__ = ["GRPO", "GRPOConfig", "GRPOLearner"]

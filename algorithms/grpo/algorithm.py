"""GRPO: generate groups of completions, score them, update with group-relative
advantages and a KL term to the frozen reference, broadcast (the LM training step of
rl/lm/algorithm.py with GRPO's learner)."""

from __future__ import annotations

from rlfleet.algorithms.grpo.config import GRPOConfig
from rlfleet.algorithms.grpo.learner import GRPOLearner
from rlfleet.rl.lm.algorithm import LMAlgorithm


class GRPO(LMAlgorithm):
    config: GRPOConfig
    config_class = GRPOConfig
    learner_class = GRPOLearner

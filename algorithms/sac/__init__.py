"""Soft Actor-Critic (Haarnoja et al. 2018): twin critics, automatic entropy tuning, for
continuous actions and, after Christodoulou (2019), discrete ones."""

from rlfleet.algorithms.sac.algorithm import SAC
from rlfleet.algorithms.sac.config import SACConfig
from rlfleet.algorithms.sac.learner import SACLearner, sac_losses

__all__ = ["SAC", "SACConfig", "SACLearner", "sac_losses"]

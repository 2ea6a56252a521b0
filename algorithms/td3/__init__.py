"""Twin Delayed DDPG (Fujimoto et al. 2018): a deterministic actor, twin critics, target
policy smoothing and delayed actor updates."""

from rlfleet.algorithms.td3.algorithm import TD3
from rlfleet.algorithms.td3.config import TD3Config
from rlfleet.algorithms.td3.learner import TD3Learner, td3_critic_loss

__all__ = ["TD3", "TD3Config", "TD3Learner", "td3_critic_loss"]

"""Proximal Policy Optimization (Schulman et al. 2017) with GAE."""

from rlfleet.algorithms.ppo.algorithm import PPO
from rlfleet.algorithms.ppo.config import PPOConfig
from rlfleet.algorithms.ppo.learner import PPOLearner, ppo_loss

__all__ = ["PPO", "PPOConfig", "PPOLearner", "ppo_loss"]

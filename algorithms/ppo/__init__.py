"""Proximal Policy Optimization (Schulman et al. 2017) with GAE."""

from algorithms.ppo.algorithm import PPO
from algorithms.ppo.config import PPOConfig
from algorithms.ppo.learner import PPOLearner, ppo_loss

__all__ = ["PPO", "PPOConfig", "PPOLearner", "ppo_loss"]

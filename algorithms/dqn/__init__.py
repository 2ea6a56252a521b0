"""Deep Q-Networks (Mnih et al. 2015) with double Q, dueling heads, n-step returns and
prioritised replay."""

from algorithms.dqn.algorithm import DQN
from algorithms.dqn.config import DQNConfig
from algorithms.dqn.learner import DQNLearner, dqn_loss

__all__ = ["DQN", "DQNConfig", "DQNLearner", "dqn_loss"]

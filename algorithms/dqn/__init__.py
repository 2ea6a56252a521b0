"""Deep Q-Networks (Mnih et al. 2015) with double Q, dueling heads, n-step returns and
prioritised replay."""

from rlfleet.algorithms.dqn.algorithm import DQN
from rlfleet.algorithms.dqn.config import DQNConfig
from rlfleet.algorithms.dqn.learner import DQNLearner, dqn_loss

__all__ = ["DQN", "DQNConfig", "DQNLearner", "dqn_loss"]

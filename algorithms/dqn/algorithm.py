"""DQN's training step: the shared off-policy loop, acting epsilon-greedily on a schedule."""

from __future__ import annotations

import numpy as np
from gymnasium import spaces

from rlfleet.algorithms import refusal
from rlfleet.algorithms.dqn.config import DQNConfig
from rlfleet.algorithms.dqn.learner import DQNLearner
from rlfleet.algorithms.dqn.module import QModuleSpec
from rlfleet.rl.core import Weights
from rlfleet.rl.learner import piecewise_linear
from rlfleet.rl.models.module import ModuleSpec
from rlfleet.rl.replay.loop import OffPolicyAlgorithm


class DQN(OffPolicyAlgorithm):
    config: DQNConfig
    config_class = DQNConfig
    learner_class = DQNLearner

    def adapt_module_spec(self, spec: ModuleSpec) -> QModuleSpec:
        if not isinstance(spec.action_space, spaces.Discrete):
            raise refusal("DQN", spec, "a Discrete action space")
        return spec.as_kind(QModuleSpec, dueling=self.config.dueling)

    def epsilon(self) -> float:
        c = self.config
        return piecewise_linear([(0, c.epsilon_initial), (c.epsilon_timesteps, c.epsilon_final)], self.env_steps)

    def acting_weights(self, weights: Weights) -> Weights:
        """Epsilon follows the env-step count; it is a buffer of the Q-network, so it
        reaches the runners inside the weights of every broadcast."""
        return {**weights, "epsilon": np.asarray(self.epsilon(), np.float32)}

    def training_step(self) -> dict[str, float]:
        metrics = super().training_step()
        metrics["learner/epsilon"] = self.epsilon()
        return metrics

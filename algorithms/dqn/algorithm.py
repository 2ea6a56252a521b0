"""DQN's training step: sample into replay, a replay-ratio's worth of updates, broadcast."""

from __future__ import annotations

from typing import Any

import numpy as np
from gymnasium import spaces

from rlfleet.algorithms.dqn.config import DQNConfig
from rlfleet.algorithms.dqn.learner import DQNLearner
from rlfleet.rl.algorithm import Algorithm
from rlfleet.rl.learner import piecewise_linear
from rlfleet.rl.module import ModuleSpec
from rlfleet.rl.replay import PrioritizedReplayBuffer, ReplayBuffer
from rlfleet.rl.spaces import UnsupportedSpaceError


class DQN(Algorithm):
    config: DQNConfig
    config_class = DQNConfig
    learner_class = DQNLearner

    def __init__(self, config: DQNConfig) -> None:
        super().__init__(config)
        c = config
        obs_space = self.module_spec.observation_space
        if c.frame_stack > 1:  # the env stacks frames; the buffer keeps one frame per step
            if not (len(obs_space.shape) >= 3 and obs_space.shape[0] == c.frame_stack):
                raise UnsupportedSpaceError(
                    f"frame_stack {c.frame_stack} needs observations stacked on the first axis, "
                    f"got shape {obs_space.shape} from env {self.env_creator.name!r}"
                )
            obs_space = spaces.Box(obs_space.low[-1], obs_space.high[-1], obs_space.shape[1:], obs_space.dtype)
        buffer_kwargs: dict[str, Any] = dict(
            num_streams=max(1, c.num_env_runners) * c.num_envs_per_runner,
            n_step=c.n_step, gamma=c.gamma, frame_stack=c.frame_stack, seed=c.seed,
        )
        if c.prioritized_replay:
            self.buffer: ReplayBuffer = PrioritizedReplayBuffer(
                c.buffer_size, obs_space, self.module_spec.action_space,
                alpha=c.prioritized_replay_alpha, beta=c.prioritized_replay_beta, **buffer_kwargs,
            )
        else:
            self.buffer = ReplayBuffer(c.buffer_size, obs_space, self.module_spec.action_space, **buffer_kwargs)
        self.update_budget = 0.0  # fractional gradient steps owed by the replay ratio
        self.set_schedules()
        self.sync_weights(new_version=False)

    def check_spaces(self, observation_space: Any, action_space: Any) -> None:
        super().check_spaces(observation_space, action_space)
        if not isinstance(action_space, spaces.Discrete):
            from rlfleet.algorithms import algorithms_supporting  # the registry, beside this package

            raise UnsupportedSpaceError(
                f"DQN needs a Discrete action space; env {self.env_creator.name!r} has {action_space}. "
                f"Algorithms for {type(action_space).__name__} actions: {', '.join(algorithms_supporting(type(action_space)))}"
            )

    def build_module_spec(self, observation_space: Any, action_space: Any) -> ModuleSpec:
        c = self.config
        return ModuleSpec(
            observation_space, action_space, hidden_sizes=tuple(c.hidden_sizes), activation=c.activation,
            env_name=self.env_creator.name, kind="q", dueling=c.dueling,
        )

    def epsilon(self) -> float:
        c = self.config
        return piecewise_linear([(0, c.epsilon_initial), (c.epsilon_timesteps, c.epsilon_final)], self.env_steps)

    def set_schedules(self) -> None:
        """Exploration and importance-sampling annealing follow the env-step count."""
        c = self.config
        self.learner_group.call("set_epsilon", self.epsilon())
        if c.prioritized_replay:
            self.buffer.beta = piecewise_linear(
                [(0, c.prioritized_replay_beta), (c.prioritized_replay_beta_timesteps, 1.0)], self.env_steps
            )

    def training_step(self) -> dict[str, float]:
        c = self.config
        fragments = self.sample()
        for frag in fragments:
            self.buffer.add(frag)
        metrics: dict[str, float] = {}
        if self.env_steps >= c.learning_starts and len(self.buffer) >= c.train_batch_size:
            self.update_budget += c.replay_ratio * sum(f.env_steps for f in fragments)
            sums: dict[str, float] = {}
            steps = int(self.update_budget)
            self.update_budget -= steps
            for _ in range(steps):
                batch = self.buffer.sample(c.train_batch_size)
                step_metrics, td_abs = self.learner_group.call("update_from_replay", batch, self.env_steps)[0]
                if c.prioritized_replay:
                    self.buffer.update_priorities(batch["indices"], td_abs)
                for k, v in step_metrics.items():
                    sums[k] = sums.get(k, 0.0) + v
            metrics = {k: v / steps for k, v in sums.items()} if steps else {}
            metrics["learner/num_grad_steps"] = steps
        self.set_schedules()
        self.sync_weights()
        metrics["learner/epsilon"] = self.epsilon()
        metrics["replay/size"] = len(self.buffer)
        return metrics

"""DQN's training step: sample into replay, a replay-ratio's worth of updates, broadcast."""

from __future__ import annotations

import dataclasses
from typing import Any

import numpy as np
from gymnasium import spaces

from rlfleet.algorithms.dqn.config import DQNConfig
from rlfleet.algorithms.dqn.learner import DQNLearner
from rlfleet.algorithms.dqn.module import QModuleSpec
from rlfleet.rl.algorithm import Algorithm
from rlfleet.rl.batch import concat_batches
from rlfleet.rl.core import Weights
from rlfleet.rl.env_runner import EnvRunnerFactory
from rlfleet.rl.learner import piecewise_linear
from rlfleet.rl.module import ModuleSpec
from rlfleet.rl.replay import PrioritizedReplayBuffer, ReplayBuffer
from rlfleet.rl.spaces import UnsupportedSpaceError


class DQN(Algorithm):
    config: DQNConfig
    config_class = DQNConfig
    learner_class = DQNLearner
    runner_factory_class = EnvRunnerFactory

    def setup(self) -> None:
        c = self.config
        obs_space = self.module_spec.observation_space
        if c.frame_stack > 1:  # the env stacks frames; the buffer keeps one frame per step
            if not (len(obs_space.shape) >= 3 and obs_space.shape[0] == c.frame_stack):
                raise UnsupportedSpaceError(
                    f"frame_stack {c.frame_stack} needs observations stacked on the first axis, "
                    f"got shape {obs_space.shape} from env {self.module_spec.env_name!r}"
                )
            obs_space = spaces.Box(obs_space.low[-1], obs_space.high[-1], obs_space.shape[1:], obs_space.dtype)
        buffer_kwargs: dict[str, Any] = dict(
            num_streams=c.num_runners * c.num_envs_per_runner, n_step=c.n_step, gamma=c.gamma,
            frame_stack=c.frame_stack, seed=c.seed,
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

    def adapt_module_spec(self, spec: ModuleSpec) -> QModuleSpec:
        if not isinstance(spec.action_space, spaces.Discrete):
            from rlfleet.algorithms import algorithms_supporting  # the registry, beside this package

            kind = type(spec.action_space)
            raise UnsupportedSpaceError(
                f"DQN needs a Discrete action space; env {spec.env_name!r} has {spec.action_space}. "
                f"Algorithms for {kind.__name__} actions: {', '.join(algorithms_supporting(kind))}"
            )
        return QModuleSpec(**{f.name: getattr(spec, f.name) for f in dataclasses.fields(spec)}, dueling=self.config.dueling)

    def epsilon(self) -> float:
        c = self.config
        return piecewise_linear([(0, c.epsilon_initial), (c.epsilon_timesteps, c.epsilon_final)], self.env_steps)

    def acting_weights(self, weights: Weights) -> Weights:
        """Epsilon follows the env-step count; it is a buffer of the Q-network, so it
        reaches the runners inside the weights of every broadcast."""
        return {**weights, "epsilon": np.asarray(self.epsilon(), np.float32)}

    def set_schedules(self) -> None:
        """Importance-sampling annealing follows the env-step count."""
        c = self.config
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
            # Uniform sampling depends on nothing a step changes: up to 16 steps' batches are
            # drawn at once and learned from in one call (one round trip to remote learners
            # instead of one per step), a gradient step per batch. Prioritised sampling uses
            # the priorities the previous step left: one step per call.
            chunk = 1 if c.prioritized_replay else 16
            for start in range(0, steps, chunk):
                n = min(chunk, steps - start)
                batches = [self.buffer.sample(c.train_batch_size) for _ in range(n)]
                indices = np.concatenate([b.pop("indices") for b in batches])
                result = self.learner_group.update(concat_batches(batches, axis=0), env_steps=self.env_steps)
                if c.prioritized_replay:
                    self.buffer.update_priorities(indices, result.per_row["td_abs"])
                for k, v in result.metrics.items():
                    sums[k] = sums.get(k, 0.0) + v * n
            metrics = {k: v / steps for k, v in sums.items()} if steps else {}
            metrics.pop("learner/num_sgd_steps", None)  # per call; the iteration's count is this:
            metrics["learner/num_grad_steps"] = steps
        self.set_schedules()
        self.sync_weights()
        metrics["learner/epsilon"] = self.epsilon()
        metrics["replay/size"] = len(self.buffer)
        return metrics

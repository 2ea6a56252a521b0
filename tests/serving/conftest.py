"""Small trained checkpoints for serving, evaluation and export tests (seconds each), and
observations from rollouts of them."""

from __future__ import annotations

import numpy as np
import pytest
import tree

from rlfleet.algorithms.dqn import DQNConfig
from rlfleet.algorithms.impala import IMPALAConfig
from rlfleet.algorithms.ppo import PPOConfig
from rlfleet.algorithms.sac import SACConfig
from rlfleet.envs import make_env_creator
from rlfleet.rl.inference import Policy

CONFIGS = {
    # Pendulum normalises observations (as its tuned example does) and clips Box actions.
    "ppo-pendulum": lambda: PPOConfig(env="Pendulum-v1", normalize_obs=True, num_envs_per_runner=8,
                                      rollout_fragment_length=256, minibatch_size=256, num_epochs=2, seed=1),
    "ppo-cartpole": lambda: PPOConfig(env="CartPole-v1", num_envs_per_runner=8, rollout_fragment_length=64,
                                      minibatch_size=128, seed=1),
    "ppo-maze": lambda: PPOConfig(env="rlfleet/MaskedMaze-v0", num_envs_per_runner=8, rollout_fragment_length=64,
                                  minibatch_size=128, seed=1, env_error_retries=0),
    "dqn-maze": lambda: DQNConfig(env="rlfleet/MaskedMaze-v0", num_envs_per_runner=8, rollout_fragment_length=32,
                                  learning_starts=256, epsilon_timesteps=2000, seed=1, env_error_retries=0),
    "impala-cartpole": lambda: IMPALAConfig(env="CartPole-v1", num_envs_per_runner=8, seed=1),
    "sac-pendulum": lambda: SACConfig(env="Pendulum-v1", learning_starts=128, minibatch_size=64, seed=1),
    "sac-maze": lambda: SACConfig(env="rlfleet/MaskedMaze-v0", learning_starts=128, minibatch_size=64, seed=1,
                                  env_error_retries=0),
    # memory: an LSTM over a Dict observation with masks; a GRU with normalised
    # observations and clipped Box actions
    "ppo-lstm-maze": lambda: PPOConfig(env="rlfleet/MaskedMaze-v0", memory="lstm", memory_size=16, max_seq_len=16,
                                       num_envs_per_runner=8, rollout_fragment_length=64, minibatch_size=128, seed=1,
                                       env_error_retries=0),
    "ppo-gru-pendulum": lambda: PPOConfig(env="Pendulum-v1", normalize_obs=True, memory="gru", memory_size=16,
                                          max_seq_len=16, num_envs_per_runner=8, rollout_fragment_length=64,
                                          minibatch_size=128, num_epochs=2, seed=1),
    "ppo-nested": lambda: PPOConfig(env="rlfleet/NestedObs-v0", num_envs_per_runner=8, rollout_fragment_length=32,
                                    minibatch_size=64, normalize_obs=True, seed=1),
}


def train(name: str, path, iterations: int = 8) -> str:
    algo = CONFIGS[name]().build()
    try:
        for _ in range(iterations):
            algo.train()
        algo.save(str(path))
    finally:
        algo.stop()
    return str(path)


@pytest.fixture(scope="session")
def checkpoints(tmp_path_factory):
    """name -> checkpoint directory, trained on first use."""
    made: dict[str, str] = {}

    def get(name: str) -> str:
        if name not in made:
            made[name] = train(name, tmp_path_factory.mktemp(name) / "checkpoint")
        return made[name]
    return get


def rollout_observations(checkpoint: str, steps: int, seed: int = 0) -> list:
    """Observations of ``steps`` steps of the policy acting with exploration (so states
    vary), episodes reset with seeds seed, seed + 1, ..."""
    policy = Policy.load(checkpoint)
    env = make_env_creator(policy.env, policy.env_config)()
    observations, episode = [], 0
    obs, _ = env.reset(seed=seed)
    while len(observations) < steps:
        observations.append(obs)
        batched = tree.map_structure(lambda x: np.asarray(x)[None], obs)
        action = tree.map_structure(lambda x: x[0], policy.act(batched, explore=True)["actions"])
        obs, _, terminated, truncated, _ = env.step(action)
        if terminated or truncated:
            episode += 1
            obs, _ = env.reset(seed=seed + episode)
    env.close()
    return observations

"""Simulators that break the gymnasium contract are named, with the offending value, at
the step where they break it; one that fails in every episode stops the run."""

from __future__ import annotations

import gymnasium as gym
import numpy as np
import pytest
from gymnasium import spaces

from rlfleet.algorithms.ppo import PPOConfig
from rlfleet.envs import EnvContractError, EnvFailedError
from rlfleet.envs.checks import structure_problem


class Scripted(gym.Env):
    """A 2-vector observation, two actions; ``bad`` says what goes wrong at step 3."""

    observation_space = spaces.Box(-1.0, 1.0, (2,), np.float32)
    action_space = spaces.Discrete(2)

    def __init__(self, bad: str = "none") -> None:
        self.bad, self.t = bad, 0

    def reset(self, *, seed=None, options=None):
        self.t = 0
        obs = np.zeros(2, np.float32)
        if self.bad == "reset-obs-only":
            return obs
        return obs, ({} if self.bad != "reset-info-list" else [])

    def step(self, action):
        self.t += 1
        obs, reward, info = np.zeros(2, np.float32), 1.0, {}
        if self.t == 3:
            if self.bad == "shape":
                obs = np.zeros(3, np.float32)
            elif self.bad == "dtype":
                obs = np.zeros(2, np.float64)
            elif self.bad == "list-obs":
                obs = [0.0, 0.0]
            elif self.bad == "reward-str":
                reward = "1.0"
            elif self.bad == "reward-none":
                reward = None
            elif self.bad == "reward-array":
                reward = np.ones(2)
            elif self.bad == "info-list":
                info = ["not", "a", "dict"]
        if self.bad == "crash-at-5" and self.t == 5:
            raise RuntimeError("solver diverged")
        return obs, reward, False, self.t >= 10, info


def run_ppo(bad: str, iterations: int = 3, **config):
    algo = PPOConfig(env=Scripted, env_config={"bad": bad}, num_envs_per_runner=2, rollout_fragment_length=8,
                     minibatch_size=16, num_epochs=1, **config).build()
    try:
        for _ in range(iterations):
            algo.train()
    finally:
        algo.stop()


@pytest.mark.parametrize("bad,message", [
    ("shape", r"'Scripted' \(sub-env 0\) returned an observation from step\(\) with shape \(3,\) where the space's is \(2,\)"),
    ("dtype", r"'Scripted' \(sub-env 0\) returned an observation from step\(\) with dtype float64 where the space's is float32"),
    ("list-obs", r"'Scripted' \(sub-env 0\) returned an observation from step\(\) with a list, not a numpy array"),
    ("reward-str", r"'Scripted' \(sub-env 0\): step\(\) returned reward '1.0', a str, not a number"),
    ("reward-none", r"'Scripted' \(sub-env 0\): step\(\) returned reward None, a NoneType, not a number"),
    ("reward-array", r"'Scripted' \(sub-env 0\): step\(\) returned reward \[1\. 1\.\], a ndarray, not a number"),
    ("info-list", r"'Scripted' \(sub-env 0\): step\(\) returned info \['not', 'a', 'dict'\], a list, not a dict"),
    ("reset-obs-only", r"'Scripted' \(sub-env 0\): reset\(\) must return \(obs, info\), got \[0\. 0\.\]"),
    ("reset-info-list", r"'Scripted' \(sub-env 0\): reset\(\) returned info \[\], a list, not a dict"),
])
def test_a_contract_break_is_named_with_the_env_and_the_value(bad, message):
    with pytest.raises(EnvContractError, match=message):
        run_ppo(bad)


@pytest.mark.parametrize("bad,message", [
    ("shape", r"'Scripted' returned an observation from step\(\) with shape \(3,\) where the space's is \(2,\)"),
    ("reward-str", r"'Scripted': step\(\) returned reward '1.0', a str, not a number"),
])
def test_sub_envs_in_subprocesses_are_checked_too(bad, message):
    with pytest.raises(EnvContractError, match=message):
        run_ppo(bad, vectorize_mode="async")


def test_a_simulator_that_fails_in_every_episode_stops_the_run():
    with pytest.raises(EnvFailedError, match=r"'Scripted': 4 episodes in a row ended in an error, none finished "
                                             r"\(the last at step 5\); last error: RuntimeError: solver diverged"):
        run_ppo("crash-at-5", iterations=50, max_failed_episodes=4)


def test_a_well_behaved_env_passes_and_structure_checks_look_at_types_not_bounds():
    run_ppo("none")
    box = spaces.Box(-1.0, 1.0, (2,), np.float32)
    assert structure_problem(np.full(2, 5.0, np.float32), box) is None  # bounds: the batched contains
    assert structure_problem(np.zeros(2, np.int16), box) is None  # safely castable
    nested = spaces.Dict({"a": box, "b": spaces.Discrete(3)})
    assert structure_problem({"a": np.zeros(2, np.float32), "b": 1}, nested) is None
    assert structure_problem({"a": np.zeros(2, np.float32), "b": 1.5}, nested) == "['b']: a float 1.5, not an integer"
    assert structure_problem({"a": np.zeros(2, np.float32)}, nested) == "keys ['a'] where the space's are ['a', 'b']"

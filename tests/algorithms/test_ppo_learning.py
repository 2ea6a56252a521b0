"""PPO learns: a seconds-long corridor check in the default run, CartPole under `-m learning`.

Thresholds come from measurements (seeds 0-5) and leave a wide margin:
- Corridor of 10 cells (reward 1 at the end, -0.01 a step, 50 steps max): a uniform random
  policy averages -0.18; the optimum is 1 - 9 * 0.01 = 0.91, which every seed reached,
  stochastically and greedily, within 12 iterations (~0.3 s).
- CartPole-v1 with tuned_examples/ppo/CartPole-v1.yaml (16 envs x 16 steps, lr 2e-3 decaying):
  seeds 0-5 first reached a mean return of 150 at 17k-28k env steps (1-2 s); the test
  allows 60k.
"""

import os

import numpy as np
import pytest

from rlfleet.algorithms.ppo import PPOConfig
from rlfleet.envs.testing import CorridorEnv
from rlfleet.scripts.tools.experiment import load_experiment

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
CORRIDOR = {"length": 10}
CORRIDOR_OPTIMUM = 1.0 - 9 * 0.01  # 10 steps right: 9 step costs, then the goal


def random_policy_return(episodes=2000):
    rng = np.random.default_rng(0)
    env = CorridorEnv(**CORRIDOR)
    returns = []
    for _ in range(episodes):
        env.reset(seed=int(rng.integers(1 << 30)))
        total, done = 0.0, False
        while not done:
            _, reward, terminated, truncated, _ = env.step(int(rng.integers(2)))
            total += reward
            done = terminated or truncated
        returns.append(total)
    return float(np.mean(returns))


def test_ppo_learns_the_corridor():
    baseline = random_policy_return()
    assert baseline < 0.0  # the task is not solved by chance
    algo = PPOConfig(env=CorridorEnv, env_config=CORRIDOR, seed=0, num_envs_per_runner=8, rollout_fragment_length=32,
                     minibatch_size=64, num_epochs=4, lr=3e-3).build()
    try:
        for _ in range(15):
            result = algo.train()
        evaluation = algo.evaluate()
    finally:
        algo.stop()
    # Mean of the last 100 training episodes (sampled actions), far above random's -0.18.
    assert result["episode_return_mean"] >= 0.7, result["episode_return_mean"]
    # Greedy: every evaluation episode walks straight to the goal (any detour scores <= 0.89).
    assert evaluation["evaluation/episode_return_min"] == pytest.approx(CORRIDOR_OPTIMUM)


@pytest.mark.learning
def test_ppo_tuned_example_learns_cartpole():
    experiment = load_experiment(os.path.join(REPO, "tuned_examples", "ppo", "CartPole-v1.yaml"))
    assert experiment.algo == "ppo"
    config = PPOConfig.from_dict({**experiment.config, "env": experiment.env, "seed": 0})
    algo = config.build()
    history = []
    try:
        while not history or not (history[-1][1] >= 150 or history[-1][0] >= 60_000):  # NaN: no episode yet
            result = algo.train()
            history.append((result["env_steps"], round(result["episode_return_mean"], 1)))
    finally:
        algo.stop()
    env_steps, ret = history[-1]
    assert ret >= 150 and env_steps <= 60_000, f"(env_steps, mean return) every 10th iteration: {history[::10]}"

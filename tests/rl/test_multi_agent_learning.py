"""Cooperative multi-agent learning (issue 16): MPE simple_spread with one policy shared by
its three agents. The tuned example's pass bar must lie at least halfway from a random
policy's mean return to the best return training reaches, both measured here, in one run."""

from __future__ import annotations

import math
import os

import pytest

from tests.extras import require_extra

pytestmark = pytest.mark.learning

EXAMPLE = os.path.join(os.path.dirname(__file__), "..", "..", "tuned_examples", "ppo",
                       "pettingzoo-simple_spread_v3.yaml")


def test_simple_spread_pass_bar_is_past_halfway_from_random_to_the_best_return():
    require_extra("mpe2", "mpe2")
    from rlfleet.algorithms.ppo import PPOConfig
    from rlfleet.envs.multi_agent import MultiAgentCreator
    from rlfleet.scripts.tools.experiment import load_experiment
    from rlfleet.rl.runners.multi_agent_runner import RANDOM_POLICY, MultiAgentEnvRunner, PolicyMapping

    exp = load_experiment(EXAMPLE)
    threshold = exp.pass_criteria.episode_return_mean
    creator = MultiAgentCreator(exp.env, exp.config.get("env_config"))
    runner = MultiAgentEnvRunner(env_creator=creator, specs={}, mapping=PolicyMapping({"*": RANDOM_POLICY}),
                                 num_envs=1, fragment_length=25, seed=0)
    random_return = runner.evaluate(500)["evaluation/episode_return_mean"]
    runner.stop()

    algo = PPOConfig.from_dict({**exp.config, "env": exp.env, "seed": 0, "log_to_console": False},
                               source=EXAMPLE).build()
    best, first = -math.inf, None
    try:
        while algo.env_steps < 650_000:
            result = algo.train()
            if result["episode_window_full"]:
                best = max(best, result["episode_return_mean"])
                if first is None and result["episode_return_mean"] >= threshold:
                    first = (result["env_steps"], result["time_s"])
    finally:
        algo.stop()
    halfway = (random_return + best) / 2
    print(f"random {random_return:.2f}, best {best:.2f} (650k env steps), halfway {halfway:.2f}, "
          f"pass bar {threshold}, reached at {first}")
    assert threshold >= halfway
    assert first is not None and first[0] <= exp.pass_criteria.env_steps

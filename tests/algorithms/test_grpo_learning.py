"""Every GRPO loss variant reaches the text-addition tuned example's bar (`-m learning`).

tuned_examples/grpo/text-addition.yaml passes at a mean reward of 0.5 over the last 512
completions within 60,000 completions; its 300-step warm-up leaves the policy right about
a quarter of the time. Each variant runs that example with only ``loss_variant`` changed
(the example's KL term stays; DAPO samples again for groups of equal rewards, and every
sampled completion counts against the budget).
"""

import os

import pytest

from rlfleet.algorithms.grpo import GRPOConfig
from rlfleet.scripts.tools.experiment import load_experiment

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


@pytest.mark.learning
@pytest.mark.parametrize("variant", ["grpo", "dr_grpo", "dapo", "gspo"])
def test_each_loss_variant_reaches_the_tuned_examples_bar(variant):
    experiment = load_experiment(os.path.join(REPO, "tuned_examples", "grpo", "text-addition.yaml"))
    criteria = experiment.pass_criteria  # mean reward 0.5 over a full window, within 60,000 completions
    budget = criteria.env_steps
    config = GRPOConfig.from_dict({**experiment.config, "env": experiment.env, "seed": 0, "loss_variant": variant})
    algo = config.build()
    history = []
    try:
        while True:
            result = algo.train()
            history.append((result["env_steps"], round(result["episode_return_mean"], 3)))
            if criteria.reached(result) or result["env_steps"] >= budget:
                break
    finally:
        algo.stop()
    env_steps, reward = history[-1]
    print(f"{variant}: reward {reward} at {env_steps} completions")
    assert criteria.reached(result) and env_steps <= budget, f"(completions, mean reward) every 10th iteration: {history[::10]}"

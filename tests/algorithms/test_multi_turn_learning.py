"""The multi-turn tool example learns (issue 17): with the calculator the reward rises
during RL from where the warm-up left it, and beats the no-tool arm trained with the same
warm-up and completion budget, in the same run."""

from __future__ import annotations

import os

import numpy as np
import pytest

pytestmark = pytest.mark.learning

ROOT = os.path.join(os.path.dirname(__file__), "..", "..", "tuned_examples", "grpo")


def train(example: str, tmp_path) -> list[dict]:
    from rlfleet.algorithms.grpo import GRPOConfig
    from rlfleet.scripts.tools.experiment import load_experiment

    exp = load_experiment(os.path.join(ROOT, example))
    algo = GRPOConfig.from_dict({**exp.config, "env": exp.env, "seed": 0, "log_to_console": False,
                                 "logdir": str(tmp_path / example)}, source=example).build()
    try:
        rows = [algo.train()]
        while rows[-1]["env_steps"] < exp.stop.env_steps:
            rows.append(algo.train())
    finally:
        algo.stop()
    return rows


def test_the_tool_arm_gains_during_rl_and_beats_the_no_tool_arm(tmp_path):
    tool = train("text-calculator.yaml", tmp_path)
    plain = train("text-calculator-no-tool.yaml", tmp_path)
    start = tool[0]["episode_return_mean"]  # the first batch: the warmed-up policy, before any update
    end_tool, end_plain = tool[-1]["episode_return_mean"], plain[-1]["episode_return_mean"]
    print(f"tool: {start:.3f} after warm-up -> {end_tool:.3f}; no tool: {plain[0]['episode_return_mean']:.3f} "
          f"-> {end_plain:.3f}; {tool[-1]['env_steps']} completions each")
    assert end_tool >= start + 0.3  # RL's gain, beyond what the warm-up gave
    assert end_tool >= end_plain + 0.5
    assert np.isfinite(tool[-1]["importance/ratio_mean"])

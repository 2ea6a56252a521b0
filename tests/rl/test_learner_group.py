"""Data-parallel learners for every algorithm: two gloo learners stay bit-identical to
each other and equal one learner on the same batch, with the tuned examples' settings
(several minibatches, advantage normalisation, epochs, prioritised replay)."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest

from rlfleet.algorithms.dqn import DQNConfig
from rlfleet.algorithms.grpo import GRPOConfig
from rlfleet.algorithms.impala import IMPALAConfig
from rlfleet.algorithms.ppo import PPOConfig
from rlfleet.algorithms.ppo.lm import LMPPOConfig
from rlfleet.algorithms.sac import SACConfig
from rlfleet.rl.batch import num_rows
from rlfleet.scripts.tools.experiment import load_experiment
from rlfleet.rl.learner import LearnerFactory, LearnerGroup
from rlfleet.runtime import LocalRuntime
from rlfleet.runtime.ray_backend import RayRuntime
from rlfleet.tuned_examples import ROOT as TUNED
from tests.fleet_envs import start_shared_ray, stop_shared_ray


@pytest.fixture(scope="module")
def shared_ray():
    start_shared_ray()
    yield
    stop_shared_ray()


def tuned(config_cls, path, **overrides):
    """The tuned example's config, sampling in this process, with ``overrides``."""
    exp = load_experiment(f"{TUNED}/{path}")
    return config_cls(**{**exp.config, "env": exp.env, "seed": 0, "device": "cpu", "num_env_runners": 0, **overrides})


def first_update(config):
    """Train until the learner's first update; return its batch, the learner state just
    before it, and the algorithm's module spec and learner class."""
    algo = config.build()
    captured = []
    real = algo.learner_group.update

    def spy(batch, *, env_steps):
        if not captured:
            captured.append((batch, env_steps, algo.learner_group.get_state()))
        return real(batch, env_steps=env_steps)

    algo.learner_group.update = spy
    try:
        while not captured:
            algo.train()
    finally:
        algo.stop()
    batch, env_steps, state = captured[0]
    return batch, env_steps, state, algo.module_spec, type(algo).learner_class, algo.config


CASES = {
    "ppo": lambda: tuned(PPOConfig, "ppo/CartPole-v1.yaml", num_envs_per_runner=8, rollout_fragment_length=32),
    # Sequences: chunks of 8 steps from stored states with 2 of burn-in; a 30-step fragment
    # pads its last chunk, so the learners hold unequal numbers of loss steps.
    "ppo-gru": lambda: tuned(PPOConfig, "ppo/CartPole-v1.yaml", num_envs_per_runner=8, rollout_fragment_length=30,
                             memory="gru", memory_size=16, max_seq_len=8, burn_in=2, minibatch_size=64),
    "dqn-prioritized": lambda: tuned(DQNConfig, "dqn/CartPole-v1.yaml", learning_starts=256, prioritized_replay=True,
                                     double_q=True),
    # R2D2: sequences of 2 + 8 + 2 steps from stored states, n-step targets inside them.
    "dqn-gru": lambda: tuned(DQNConfig, "dqn/CartPole-v1.yaml", learning_starts=256, memory="gru", memory_size=16,
                             max_seq_len=8, burn_in=2, minibatch_size=64),
    # Uniform replay: an iteration's replay batches in one call, a gradient step each.
    "dqn-uniform": lambda: tuned(DQNConfig, "dqn/CartPole-v1.yaml", learning_starts=256),
    "impala": lambda: tuned(IMPALAConfig, "impala/CartPole-v1.yaml"),
    # each env's fragment through an LSTM, restarting from stored states every 8 steps
    "impala-lstm": lambda: tuned(IMPALAConfig, "impala/CartPole-v1.yaml", memory="lstm", memory_size=16, max_seq_len=8),
    # Three optimiser groups, soft target updates, and noise drawn for the whole batch.
    "sac": lambda: tuned(SACConfig, "sac/Pendulum-v1.yaml", learning_starts=256),
    "grpo": lambda: tuned(GRPOConfig, "grpo/text-addition.yaml", warmup_steps=30, minibatch_size=32),
    "lm-ppo": lambda: tuned(LMPPOConfig, "ppo/text-addition.yaml", warmup_steps=30, minibatch_size=16,
                            prompts_per_runner=16, num_epochs=2),
}


@pytest.mark.parametrize("name", sorted(CASES))
def test_two_learners_equal_one_learner_and_each_other(shared_ray, name):
    config = CASES[name]()
    # the config as the run resolved it (the fields left to the env's spaces filled in)
    batch, env_steps, state, spec, learner_cls, config = first_update(config)
    # The learners start from the captured state; LM learners skip their warm-up for it.
    config = dataclasses.replace(config, logdir=None, **({"warmup_steps": 0} if hasattr(config, "warmup_steps") else {}))
    factory = LearnerFactory(learner_cls, module_spec=spec, config=config)
    one = LearnerGroup(LocalRuntime(), factory, 0, num_gpus_per_learner=0.0)
    two = LearnerGroup(RayRuntime(), factory, 2, num_gpus_per_learner=0.0)
    try:
        one.set_state(state)
        two.set_state(state)
        before = one.get_weights()
        result_one = one.update(batch, env_steps=env_steps)
        result_two = two.update(batch, env_steps=env_steps)
        after = one.get_weights()
        rank0, rank1 = [r.value for r in two.group.call("get_weights")]
    finally:
        two.stop()

    assert result_one.metrics["learner/num_grad_steps"] == result_two.metrics["learner/num_grad_steps"]
    assert result_one.metrics["learner/num_grad_steps"] >= (1 if name == "dqn-prioritized" else 2), result_one.metrics
    moved = max(float(np.abs(after[k] - before[k]).max(initial=0.0)) for k in after)
    assert moved > 1e-4, "the update must change the weights for the comparison to mean anything"
    for k in after:
        assert np.array_equal(rank0[k], rank1[k]), f"{name}: learners disagree on {k}"
        gap = float(np.abs(rank0[k] - after[k]).max(initial=0.0))
        assert gap <= 1e-5, f"{name}: {k}: max |2 learners - 1 learner| = {gap:.3g}"
    for key, values in result_one.per_row.items():  # DQN: every row's |TD error|, in order
        np.testing.assert_allclose(result_two.per_row[key], values, rtol=0, atol=1e-5)
    if name.startswith("dqn") or name == "sac":
        assert len(result_two.per_row["td_abs"]) == num_rows(batch)

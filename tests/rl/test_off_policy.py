"""The shared off-policy loop: replay buffers that save and load their whole state, and a
run that resumes from a checkpoint with its replay buffer exactly as if never stopped."""

from __future__ import annotations

import gymnasium as gym
import numpy as np
import pytest
from gymnasium import spaces

from rlfleet.algorithms.sac import SACConfig
from rlfleet.rl.checkpoint import CheckpointError
from rlfleet.rl.core import Fragment
from rlfleet.rl.replay import PrioritizedReplayBuffer, ReplayBuffer

OBS, ACT = spaces.Box(-10.0, 10.0, (2,), np.float32), spaces.Box(-1.0, 1.0, (1,), np.float32)


def fragment(rng: np.random.Generator, first: bool = False, T: int = 8, B: int = 2) -> Fragment:
    """A fragment of 2 envs whose env 0 is truncated at t = 3 (its true last observation in
    the side store) and starts a new episode at t = 4."""
    truncated, is_first = np.zeros((T, B), bool), np.zeros((T, B), bool)
    truncated[3, 0] = is_first[4, 0] = True
    is_first[0] = first
    batch = {"obs": rng.normal(size=(T, B, 2)).astype(np.float32), "actions": [rng.uniform(-1, 1, (T, B, 1)).astype(np.float32)],
             "rewards": rng.normal(size=(T, B)).astype(np.float32), "terminated": np.zeros((T, B), bool),
             "truncated": truncated, "is_first": is_first,
             "bootstrap_obs": rng.normal(size=(B, 2)).astype(np.float32)}
    return Fragment(batch, [], [], T * B, 0, final_obs=[(3, 0, rng.normal(size=2).astype(np.float32))])


@pytest.mark.parametrize("prioritized", [False, True])
def test_a_loaded_buffer_samples_what_the_saved_one_would(prioritized):
    make = (lambda: PrioritizedReplayBuffer(64, OBS, ACT, num_streams=2, n_step=2, seed=1)) if prioritized else \
        (lambda: ReplayBuffer(64, OBS, ACT, num_streams=2, n_step=2, seed=1))
    rng = np.random.default_rng(0)
    saved = make()
    for i in range(3):
        saved.add(fragment(rng, first=i == 0))
    if prioritized:
        batch = saved.sample(8)
        saved.update_priorities(batch["indices"], np.arange(8.0))
    loaded = make()
    loaded.set_state(saved.get_state())
    assert len(loaded) == len(saved) > 0
    for _ in range(3):
        a, b = saved.sample(16), loaded.sample(16)
        for key in a:
            for x, y in zip(np.asarray(a[key], dtype=object).ravel() if key == "actions" else [a[key]],
                            np.asarray(b[key], dtype=object).ravel() if key == "actions" else [b[key]]):
                np.testing.assert_array_equal(np.asarray(x), np.asarray(y), err_msg=key)
    rng2 = np.random.default_rng(5)
    extra = fragment(rng2)
    saved.add(extra)
    loaded.add(extra)
    np.testing.assert_array_equal(saved.sample(16)["rewards"], loaded.sample(16)["rewards"])


def test_a_buffer_of_another_size_is_refused():
    small, big = ReplayBuffer(64, OBS, ACT, num_streams=2), ReplayBuffer(128, OBS, ACT, num_streams=2)
    with pytest.raises(ValueError, match="does not fit"):
        big.set_state(small.get_state())


class Reach(gym.Env):
    """Deterministic: move x by 0.1 a towards 0; 16 steps an episode, always from x = 0.5."""

    observation_space = OBS
    action_space = ACT

    def reset(self, *, seed=None, options=None):
        super().reset(seed=seed)
        self.x, self.t = 0.5, 0
        return np.array([self.x, 0.0], np.float32), {}

    def step(self, action):
        self.x = float(np.clip(self.x + 0.1 * float(action[0]), -5, 5))
        self.t += 1
        return np.array([self.x, self.t / 16], np.float32), -abs(self.x), False, self.t >= 16, {}


def config(**kw):
    # one episode per iteration, so a restored run's fresh episodes are the ones it would have had
    return SACConfig(**{**dict(env=Reach, seed=0, num_envs_per_runner=1, rollout_fragment_length=16,
                               learning_starts=32, minibatch_size=16, buffer_size=1000, hidden_sizes=(32, 32),
                               checkpoint_replay=True), **kw})


def test_an_off_policy_run_resumes_exactly_with_its_replay_buffer(tmp_path):
    timing = {"time_s", "env_steps_per_s", "runner_busy_fraction", "weight_sync_s"}
    strip = lambda row: {k: v for k, v in row.items() if k not in timing and not k.startswith("startup/")}  # noqa: E731
    a = config().build()
    try:
        for _ in range(3):
            a.train()
        a.save(str(tmp_path))
        straight = [strip(a.train()) for _ in range(5)]
        weights = a.learner_group.get_weights()
    finally:
        a.stop()
    b = config().build()
    try:
        b.restore(str(tmp_path))
        resumed = [strip(b.train()) for _ in range(5)]
        again = b.learner_group.get_weights()
    finally:
        b.stop()
    assert straight[-1]["learner/num_grad_steps"] > 0
    np.testing.assert_equal(resumed, straight)
    for key in weights:
        np.testing.assert_array_equal(again[key], weights[key], err_msg=key)


def test_without_checkpoint_replay_the_checkpoint_holds_no_buffer_and_a_restore_asking_for_one_warns(tmp_path):
    run = config(checkpoint_replay=False).build()
    try:
        for _ in range(3):
            run.train()
        assert "replay" not in run.get_state()
        run.save(str(tmp_path))
    finally:
        run.stop()
    fresh = config().build()
    try:
        with pytest.warns(UserWarning, match="holds no replay buffer"):
            fresh.restore(str(tmp_path))
        assert len(fresh.buffer) == 0
    finally:
        fresh.stop()


def test_a_saved_buffer_that_does_not_fit_is_a_checkpoint_error(tmp_path):
    run = config().build()
    try:
        for _ in range(3):
            run.train()
        run.save(str(tmp_path))
    finally:
        run.stop()
    other = config(buffer_size=500).build()
    try:
        with pytest.raises(CheckpointError, match="does not fit"):
            other.restore(str(tmp_path))
    finally:
        other.stop()

"""Atari preprocessing: shapes, frame stacking, reward clipping, episodic life, seeded
no-op starts, the missing-dependency message, and a short DQN run on Pong.

Skipped as a whole without ale_py (CI installs only ``.[test]``).
"""

import sys
import time

import numpy as np
import pytest

from tests.extras import require_extra

require_extra("atari", "ale_py")

from rlfleet.envs import make_env_creator, registry  # noqa: E402
from rlfleet.envs.atari import make_atari, register_atari_envs  # noqa: E402


def run_twins(env_a, env_b, num_steps, *, seed, rng_seed=0):
    """Step two envs built from the same game with the same seed and the same random
    actions, resetting both whenever ``env_a``'s learning episode ends; yields each step's
    pair of (obs, reward, terminated, truncated, info)."""
    rng = np.random.default_rng(rng_seed)
    env_a.reset(seed=seed)
    env_b.reset(seed=seed)
    for _ in range(num_steps):
        action = int(rng.integers(env_a.action_space.n))
        a, b = env_a.step(action), env_b.step(action)
        yield a, b
        if a[2] or a[3]:
            env_a.reset()
            env_b.reset()


def test_observations_are_channel_first_uint8_stacks():
    env = make_atari("ALE/Pong-v5")
    assert env.observation_space.shape == (4, 84, 84)
    assert env.observation_space.dtype == np.uint8
    obs, _ = env.reset(seed=0)
    assert obs.shape == (4, 84, 84) and obs.dtype == np.uint8
    assert all(np.array_equal(obs[0], obs[k]) for k in range(1, 4)), "a reset pads with its own frame"
    obs, *_ = env.step(0)
    assert env.observation_space.contains(obs)
    assert make_atari("ALE/Pong-v5", frame_stack=1).observation_space.shape == (1, 84, 84)

    # The CNN reads (4, 84, 84) as CHW, with the Nature-DQN trunk for 84x84 frames.
    from rlfleet.rl.models.module import LeafEncoder

    encoder = LeafEncoder(env.observation_space)
    assert encoder.channels_last is False
    assert encoder.cnn[0][0].in_channels == 4 and encoder.out_dim == 512


def test_stack_holds_the_last_four_frames_and_restarts_at_a_lost_life():
    # Breakout loses a life within ~40 random steps, so the stack is also checked across a
    # learning-episode boundary, where it must restart padded with the reset frame.
    stacked, single = make_atari("ALE/Breakout-v5"), make_atari("ALE/Breakout-v5", frame_stack=1)
    first, _ = single.reset(seed=5)
    stacked_first, _ = stacked.reset(seed=5)
    np.testing.assert_array_equal(stacked_first, np.repeat(first, 4, axis=0))
    frames = [first[0]] * 4
    boundaries = 0
    rng = np.random.default_rng(1)
    for _ in range(150):
        action = int(rng.integers(4))
        s_obs, _, s_term, s_trunc, _ = stacked.step(action)
        f_obs, _, f_term, _, _ = single.step(action)
        frames.append(f_obs[0])
        np.testing.assert_array_equal(s_obs, np.stack(frames[-4:]))
        assert s_term == f_term
        if s_term or s_trunc:
            boundaries += 1
            s_obs, _ = stacked.reset()
            f_obs, _ = single.reset()
            frames = [f_obs[0]] * 4
            np.testing.assert_array_equal(s_obs, np.stack(frames))
    assert boundaries >= 1


def test_rewards_are_clipped_to_their_sign_and_the_raw_score_is_reported():
    clipped = make_atari("ALE/SpaceInvaders-v5")
    raw = make_atari("ALE/SpaceInvaders-v5", clip_rewards=False)
    raw_sum, game_returns = 0.0, []
    seen = set()
    for (o1, r1, *_, i1), (o2, r2, *_, i2) in run_twins(clipped, raw, 400, seed=3):
        np.testing.assert_array_equal(o1, o2)  # only the reward differs between the two
        assert r1 == np.sign(r2)
        seen.add(r2)
        raw_sum += r2
        if "episode_game_return" in i1:
            game_returns = [i1["episode_game_return"], i2["episode_game_return"]]
            break
    assert max(seen) > 1, "SpaceInvaders pays 5..30 per alien: the test needs a reward to clip"
    # The whole game's raw score, all lives, whether or not the learning rewards are clipped.
    assert game_returns == [raw_sum, raw_sum] and raw_sum > 1


def test_a_lost_life_ends_the_learning_episode_but_not_the_game():
    env = make_atari("ALE/Breakout-v5")
    ale = env.unwrapped.ale
    _, info = env.reset(seed=0)
    assert info["lives"] == 5
    for lives_left in (4, 3, 2, 1):
        frame_before = ale.getEpisodeFrameNumber()
        while True:  # NOOP never moves the paddle: the served ball is soon missed
            _, _, terminated, truncated, info = env.step(0)
            if terminated or truncated:
                break
        assert terminated and not truncated
        assert info["lives"] == lives_left and "episode_game_return" not in info
        _, info = env.reset()
        # The same game goes on: the emulator's episode clock was not reset.
        assert info["lives"] == lives_left and ale.getEpisodeFrameNumber() > frame_before
    while True:
        _, _, terminated, truncated, info = env.step(0)
        if terminated or truncated:
            break
    assert info["lives"] == 0 and info["episode_game_return"] == 0.0
    assert info["episode_game_length"] > 0
    frame_at_game_over = ale.getEpisodeFrameNumber()
    _, info = env.reset()
    assert info["lives"] == 5 and ale.getEpisodeFrameNumber() < frame_at_game_over  # a real reset


def test_without_episodic_life_only_game_over_terminates():
    env = make_atari("ALE/Breakout-v5", terminal_on_life_loss=False)
    env.reset(seed=0)
    lives = []
    while True:  # FIRE serves again after each lost life, as an agent must learn to do here
        _, _, terminated, truncated, info = env.step(1)
        lives.append(info["lives"])
        if terminated or truncated:
            break
    assert lives[0] == 5 and lives[-1] == 0 and "episode_game_return" in info


def test_a_game_past_max_episode_steps_is_truncated_and_really_reset():
    env = make_atari("ALE/Pong-v5", max_episode_steps=50)
    env.reset(seed=0)
    for step in range(1, 51):
        _, _, terminated, truncated, info = env.step(0)
        if terminated or truncated:
            break
    # The limit counts the reset's no-ops and FIRE too: the ALE counts frames per game.
    assert truncated and not terminated and step <= 50
    assert info["episode_game_length"] == step + 1  # the FIRE press at reset is a step of the game
    _, info = env.reset()
    assert info["episode_frame_number"] <= 30 + 4  # no-ops and FIRE of a fresh game


def test_no_op_starts_are_seeded():
    env = make_atari("ALE/Pong-v5")
    ale = env.unwrapped.ale

    def start(seed):
        obs, _ = env.reset(seed=seed)
        return obs, ale.getEpisodeFrameNumber()

    (obs_a, frames_a), (obs_b, frames_b) = start(7), start(7)
    np.testing.assert_array_equal(obs_a, obs_b)
    assert frames_a == frames_b
    # 1..30 no-op frames, then FIRE held for 4 frames.
    starts = {start(seed)[1] for seed in range(8)}
    assert len(starts) > 1 and all(1 + 4 <= f <= 30 + 4 for f in starts)


def test_missing_ale_py_names_the_extra_to_install(monkeypatch):
    monkeypatch.setitem(sys.modules, "ale_py", None)  # makes `import ale_py` raise ImportError
    with pytest.raises(ImportError, match=r"pip install 'rlfleet\[atari\]'"):
        make_atari("ALE/Pong-v5")
    with pytest.raises(ImportError, match=r"pip install 'rlfleet\[atari\]'"):
        register_atari_envs(["ALE/Pong-v5"])


def test_settings_make_atari_owns_are_refused_with_the_alternative():
    with pytest.raises(ValueError, match="frame_skip"):
        make_atari("ALE/Pong-v5", frameskip=4)
    with pytest.raises(ValueError, match="ALE id"):
        make_atari("CartPole-v1")
    with pytest.raises(ValueError, match="frame_stack must be >= 1"):
        make_atari("ALE/Pong-v5", frame_stack=0)


def test_registered_ale_ids_build_the_preprocessed_env(monkeypatch):
    monkeypatch.setattr(registry, "_REGISTRY", dict(registry._REGISTRY))  # leave no trace
    # A typo is not registered, so the registry's "did you mean" answers it.
    assert register_atari_envs(["ALE/Pong-v5", "ALE/Pongg-v5"]) == ["ALE/Pong-v5"]
    env = make_env_creator("ALE/Pong-v5", {"frame_stack": 2, "repeat_action_probability": 0.0})()
    assert env.observation_space.shape == (2, 84, 84)
    assert env.unwrapped.ale.getFloat("repeat_action_probability") == 0.0
    assert make_env_creator("ALE/Pong-v5")().unwrapped.ale.getFloat("repeat_action_probability") == 0.25


def make_pong(env_config):
    return make_atari("ALE/Pong-v5", **env_config)


def test_dqn_trains_on_pong():
    from rlfleet.algorithms.dqn import DQNConfig

    config = DQNConfig(
        env=make_pong, seed=0, frame_stack=4, buffer_size=2000, learning_starts=200, minibatch_size=32,
        num_envs_per_runner=2, rollout_fragment_length=50, hidden_sizes=(64,), replay_ratio=0.05,
        target_update_interval=10,
    )
    algo = config.build()
    try:
        # The buffer keeps one 84x84 frame per step, not the stack of four.
        assert algo.buffer._obs[0].shape == (algo.buffer.capacity, 84, 84)
        start = time.perf_counter()
        results = [algo.train() for _ in range(5)]
        elapsed = time.perf_counter() - start
    finally:
        algo.stop()
    assert results[-1]["env_steps"] == 500
    grad_steps = sum(r.get("learner/num_grad_steps", 0) for r in results)
    assert grad_steps == 20  # 0.05 per env step from the iteration that reaches 200: 4 x 100 x 0.05
    assert np.isfinite(results[-1]["losses/td_loss"])
    print(f"DQN on Pong: {500 / elapsed:.0f} env steps/s including {grad_steps} gradient steps")

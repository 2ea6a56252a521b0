"""Atari games (the Arcade Learning Environment) with the standard DQN preprocessing.

``make_atari("ALE/Pong-v5")`` builds, from the inside out (Mnih et al. 2015, as the
baselines / Stable-Baselines3 / CleanRL Atari wrappers do it):

    ALE env, frameskip=1, grayscale    sticky actions (p=0.25) stay on: ALE v5's default
    AtariFrames        no-op starts; 4-frame skip, max over the last two; 84x84
    GameScore          the real game's raw score and length into ``info`` at its end
    EpisodicLife       a lost life ends the learning episode, not the game
    FireReset          press FIRE after each reset, for games that wait for it
    SignReward         rewards clipped to {-1, 0, 1}
    FrameStackObservation   (k, 84, 84) uint8, channel-first, padded with the reset frame

Episodic life and reward clipping change what an "episode return" means: the returns a
runner sums are per life and clipped. The real score of a whole game (unclipped, all
lives) is in ``info["episode_game_return"]`` (and its length in agent steps in
``info["episode_game_length"]``) on the step where the game really ends; report those.

Frames are resized by exact area averaging (a few weighted taps per axis), which is what
OpenCV's INTER_AREA computes for a downscale (checked: equal to within one grey level,
rounding), so opencv is not a dependency.
"""

from __future__ import annotations

import functools
import math
from typing import Any, Iterable, SupportsFloat

import gymnasium as gym
import numpy as np
from gymnasium import spaces
from gymnasium.wrappers import FrameStackObservation

from rlfleet.envs.registry import register_env

INSTALL_HINT = "pip install 'rlfleet[atari]'"
NOOP, FIRE = 0, 1  # NOOP is action 0 in every game; FIRE is action 1 where a game has it


def _require_ale() -> None:
    """Import ale_py (which registers the ``ALE/...`` ids with gymnasium) or say how to get it."""
    try:
        import ale_py
    except ImportError as e:
        raise ImportError(
            f"Atari envs need ale_py (the Arcade Learning Environment, ROMs included), which is not installed; "
            f"install it with: {INSTALL_HINT}"
        ) from e
    gym.register_envs(ale_py)


def _area_taps(n_in: int, n_out: int) -> tuple[np.ndarray, np.ndarray]:
    """Input indices and weights, both (n_out, k), that average each output pixel's
    footprint in the input along one axis.

    Output pixel i covers input coordinates [i * s, (i + 1) * s) with s = n_in / n_out;
    input pixel j counts by the length of its overlap with that span, divided by s. Such a
    span touches at most ceil(s) + 1 input pixels, so k taps replace a dense (n_out, n_in)
    matrix (whose BLAS product is both slower and spawns threads inside every runner).
    """
    s = n_in / n_out
    start = np.arange(n_out)[:, None] * s  # (n_out, 1)
    idx = np.floor(start).astype(np.int64) + np.arange(math.ceil(s) + 1)  # (n_out, k)
    overlap = np.minimum(start + s, idx + 1) - np.maximum(start, idx)  # <= 0 past the span
    weights = np.clip(overlap, 0.0, None) / s
    return np.minimum(idx, n_in - 1), weights.astype(np.float32)


class AtariFrames(gym.Wrapper):
    """No-op starts, frame skipping with max-pooling, and square grayscale frames.

    * Reset takes a random 1..``noop_max`` no-ops (drawn from the env's seeded generator),
      so a policy cannot succeed by memorising one action sequence from one start state.
    * Each step repeats the action for ``frame_skip`` emulator frames and sums the reward.
    * The observation is the pixel-wise max of the last two emulator frames: some games
      draw sprites only on alternate frames, and a single frame would miss them.
    * The max is resized to ``screen_size`` x ``screen_size`` by area averaging.

    The base env must run with ``frameskip=1`` and ``obs_type="grayscale"``.
    """

    def __init__(self, env: gym.Env, *, frame_skip: int, noop_max: int, screen_size: int) -> None:
        super().__init__(env)
        shape = env.observation_space.shape
        if len(shape) != 2:
            raise ValueError(f"AtariFrames needs grayscale (H, W) frames from the base env, got shape {shape}")
        self.frame_skip, self.noop_max = frame_skip, noop_max
        self._row_taps = _area_taps(shape[0], screen_size)
        self._col_taps = _area_taps(shape[1], screen_size)
        self._last_two = np.zeros((2, *shape), np.uint8)  # the two newest emulator frames
        self._newest = 0  # which row of _last_two holds the newest
        self.observation_space = spaces.Box(0, 255, (screen_size, screen_size), np.uint8)

    def _push(self, frame: np.ndarray) -> None:
        self._newest ^= 1
        self._last_two[self._newest] = frame

    def _observation(self) -> np.ndarray:
        pooled = np.maximum(self._last_two[0], self._last_two[1]).astype(np.float32)  # (H, W)
        (rows, row_w), (cols, col_w) = self._row_taps, self._col_taps
        resized = np.einsum("ok,okw->ow", row_w, pooled[rows])  # (S, W)
        resized = np.einsum("hok,ok->ho", resized[:, cols], col_w)  # (S, S)
        # A convex combination of values in [0, 255]: rounding is all the cast needs.
        return np.rint(resized).astype(np.uint8)

    def reset(self, *, seed: int | None = None, options: dict | None = None) -> tuple[np.ndarray, dict]:
        frame, info = self.env.reset(seed=seed, options=options)
        self._last_two[:] = frame
        noops = int(self.np_random.integers(1, self.noop_max + 1)) if self.noop_max > 0 else 0
        for _ in range(noops):
            frame, _, terminated, truncated, info = self.env.step(NOOP)
            self._push(frame)
            if terminated or truncated:
                frame, info = self.env.reset(options=options)
                self._last_two[:] = frame
        return self._observation(), info

    def step(self, action: int) -> tuple[np.ndarray, float, bool, bool, dict]:
        reward, terminated, truncated, info = 0.0, False, False, {}
        for _ in range(self.frame_skip):
            frame, r, terminated, truncated, info = self.env.step(action)
            self._push(frame)
            reward += float(r)
            if terminated or truncated:
                break
        return self._observation(), reward, terminated, truncated, info


class GameScore(gym.Wrapper):
    """Puts the real game's raw score and length (agent steps) into ``info`` when it ends.

    It sits below the life and reward wrappers, so it sees every real step, unclipped,
    across all lives, and its ``reset`` runs only when the emulator really resets.
    """

    def __init__(self, env: gym.Env) -> None:
        super().__init__(env)
        self._score, self._length = 0.0, 0

    def reset(self, *, seed: int | None = None, options: dict | None = None) -> tuple[Any, dict]:
        self._score, self._length = 0.0, 0
        return self.env.reset(seed=seed, options=options)

    def step(self, action: int) -> tuple[Any, SupportsFloat, bool, bool, dict]:
        obs, reward, terminated, truncated, info = self.env.step(action)
        self._score += float(reward)
        self._length += 1
        if terminated or truncated:
            info = {**info, "episode_game_return": self._score, "episode_game_length": self._length}
        return obs, reward, terminated, truncated, info


class EpisodicLife(gym.Wrapper):
    """A lost life ends the learning episode (``terminated=True``, so no value is
    bootstrapped past it) while the game goes on: ``reset`` after a lost life continues the
    same game, and only a real game over (or ``reset(seed=...)``) resets the emulator.

    Mnih et al. (2015) found this speeds up learning; Machado et al. (2018) recommend
    against using it to *evaluate*, so scores are reported per game (see ``GameScore``).
    """

    def __init__(self, env: gym.Env) -> None:
        super().__init__(env)
        self._lives = 0
        self._game_over = True

    def _ale_lives(self) -> int:
        return int(self.unwrapped.ale.lives())

    def step(self, action: int) -> tuple[Any, SupportsFloat, bool, bool, dict]:
        obs, reward, terminated, truncated, info = self.env.step(action)
        self._game_over = terminated or truncated
        lives = self._ale_lives()
        # Games without lives report 0 throughout; the last life's loss is a game over anyway.
        if 0 < lives < self._lives:
            terminated = True
        self._lives = lives
        return obs, reward, terminated, truncated, info

    def reset(self, *, seed: int | None = None, options: dict | None = None) -> tuple[Any, dict]:
        if self._game_over or seed is not None:
            obs, info = self.env.reset(seed=seed, options=options)
        else:
            # Step past the frame where the life was lost. Should the game end on this very
            # step (it practically never does), its GameScore record is dropped with it.
            obs, _, terminated, truncated, info = self.env.step(NOOP)
            if terminated or truncated:
                obs, info = self.env.reset(options=options)
        self._lives = self._ale_lives()
        self._game_over = False
        return obs, info


class FireReset(gym.Wrapper):
    """Presses FIRE once after every reset (a lost life included, when it sits above
    ``EpisodicLife``): games like Breakout wait for it to serve, and a random policy can
    spend hundreds of steps before it happens to press it."""

    def reset(self, *, seed: int | None = None, options: dict | None = None) -> tuple[Any, dict]:
        self.env.reset(seed=seed, options=options)
        obs, _, terminated, truncated, info = self.env.step(FIRE)
        if terminated or truncated:
            obs, info = self.env.reset(options=options)
        return obs, info


def needs_fire(env: gym.Env) -> bool:
    """Whether the game has a FIRE action to press at reset (the baselines' criterion)."""
    meanings = env.unwrapped.get_action_meanings()
    return len(meanings) >= 3 and meanings[FIRE] == "FIRE"


class SignReward(gym.RewardWrapper):
    """Rewards become their sign, so one learning rate and one network fit every game's
    score scale (Mnih et al. 2015); the raw score stays in ``GameScore``'s info."""

    def reward(self, reward: SupportsFloat) -> float:
        return float(np.sign(reward))


_RESERVED = {
    "frameskip": "frame_skip (the emulator runs frameskip=1 under AtariFrames)",
    "obs_type": "nothing (frames are grayscale by construction)",
    "max_num_frames_per_episode": "max_episode_steps",
}


def make_atari(
    env_id: str,
    *,
    frame_skip: int = 4,
    noop_max: int = 30,
    screen_size: int = 84,
    terminal_on_life_loss: bool = True,
    clip_rewards: bool = True,
    frame_stack: int = 4,
    full_action_space: bool = False,
    max_episode_steps: int = 27_000,
    **ale_kwargs: Any,
) -> gym.Env:
    """An ALE game with the DQN preprocessing; observations (frame_stack, screen_size,
    screen_size) uint8, newest frame last.

    Args:
        env_id: an ALE id, e.g. ``"ALE/Pong-v5"``.
        frame_skip: emulator frames per agent step (max-pooled over the last two).
        noop_max: reset takes a random 1..noop_max no-ops; 0 takes none.
        screen_size: side of the square grayscale frame.
        terminal_on_life_loss: a lost life ends the learning episode (not the game).
        clip_rewards: rewards become their sign.
        frame_stack: frames per observation; 1 still gives a (1, H, W) image.
        full_action_space: all 18 joystick actions instead of the game's minimal set.
        max_episode_steps: agent steps a game may last before it is truncated; the default
            is ALE's 108,000 emulator frames (30 minutes of play) at frame_skip 4.
        ale_kwargs: passed to the ALE env, e.g. ``repeat_action_probability=0.0`` to turn
            off sticky actions (0.25, ALE v5's default, otherwise).
    """
    _require_ale()
    if not env_id.startswith("ALE/"):
        raise ValueError(f"make_atari takes an ALE id such as 'ALE/Pong-v5', got {env_id!r}")
    for key, instead in _RESERVED.items():
        if key in ale_kwargs:
            raise ValueError(f"make_atari sets the ALE's {key!r} itself; use {instead}")
    for name, value, least in (("frame_skip", frame_skip, 1), ("noop_max", noop_max, 0),
                               ("screen_size", screen_size, 1), ("frame_stack", frame_stack, 1),
                               ("max_episode_steps", max_episode_steps, 1)):
        if value < least:
            raise ValueError(f"{name} must be >= {least}, got {value}")
    env = gym.make(
        env_id,
        frameskip=1,
        obs_type="grayscale",
        full_action_space=full_action_space,
        # The ALE counts the limit in emulator frames over the whole game, lives included.
        max_num_frames_per_episode=max_episode_steps * frame_skip,
        disable_env_checker=True,
        **ale_kwargs,
    )
    env = AtariFrames(env, frame_skip=frame_skip, noop_max=noop_max, screen_size=screen_size)
    env = GameScore(env)
    if terminal_on_life_loss:
        env = EpisodicLife(env)
    if needs_fire(env):
        env = FireReset(env)
    if clip_rewards:
        env = SignReward(env)
    # "reset" padding repeats the first frame of an episode, which is also how the replay
    # buffer rebuilds the stacks of an episode's first steps from single frames.
    return FrameStackObservation(env, frame_stack, padding_type="reset")


def _make_from_config(env_id: str, env_config: dict) -> gym.Env:
    return make_atari(env_id, **env_config)


def register_atari_envs(names: Iterable[str]) -> list[str]:
    """Make each ALE id in ``names`` resolve through our registry to ``make_atari``, with
    ``env_config`` as its keyword arguments; returns the names registered.

    Names gymnasium does not know (after importing ale_py) are left out, so the registry's
    "unknown env, did you mean ..." message still answers a typo.
    """
    _require_ale()
    known = [name for name in names if name in gym.registry]
    for name in known:
        register_env(name, functools.partial(_make_from_config, name))
    return known

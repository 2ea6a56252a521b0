"""Small envs for tests and benchmarks: nested spaces, images, contract breakers, costs."""

from __future__ import annotations

import time
from typing import Any

import gymnasium as gym
import numpy as np
from gymnasium import spaces

from rlfleet.envs.masked import MaskedChoiceEnv, MaskedMazeEnv


class CorridorEnv(gym.Env):
    """Walk right along a corridor of ``length`` cells; reward 1 at the end, -0.01 a step."""

    def __init__(self, length: int = 5, max_steps: int = 50) -> None:
        self.length, self.max_steps = length, max_steps
        self.observation_space = spaces.Box(0.0, 1.0, (1,), np.float32)
        self.action_space = spaces.Discrete(2)

    def reset(self, *, seed: int | None = None, options: dict | None = None) -> tuple[np.ndarray, dict]:
        super().reset(seed=seed)
        self.pos, self.t = 0, 0
        return self._obs(), {}

    def _obs(self) -> np.ndarray:
        return np.array([self.pos / self.length], np.float32)

    def step(self, action: int) -> tuple[np.ndarray, float, bool, bool, dict]:
        self.t += 1
        self.pos = max(0, self.pos + (1 if action == 1 else -1))
        terminated = self.pos >= self.length
        reward = 1.0 if terminated else -0.01
        # what info_metrics tests aggregate: a success flag and a distance
        return self._obs(), reward, terminated, self.t >= self.max_steps, {"success": terminated, "position": self.pos}


class NestedObsEnv(gym.Env):
    """Dict observation (vector + discrete) and Tuple action (Discrete, Box): exercises
    dm-tree flattening end to end. Reward is high when the action echoes the observation."""

    def __init__(self, max_steps: int = 20) -> None:
        self.max_steps = max_steps
        self.observation_space = spaces.Dict(
            {"pos": spaces.Box(-1.0, 1.0, (2,), np.float32), "mode": spaces.Discrete(3)}
        )
        self.action_space = spaces.Tuple((spaces.Discrete(3), spaces.Box(-1.0, 1.0, (1,), np.float32)))

    def reset(self, *, seed: int | None = None, options: dict | None = None) -> tuple[dict, dict]:
        super().reset(seed=seed)
        self.t = 0
        return self._obs(), {}

    def _obs(self) -> dict:
        self.mode = int(self.np_random.integers(3))
        self.pos = self.np_random.uniform(-1, 1, 2).astype(np.float32)
        return {"pos": self.pos, "mode": self.mode}

    def step(self, action: tuple) -> tuple[dict, float, bool, bool, dict]:
        choice, value = action
        reward = float(choice == self.mode) - float(abs(value[0] - self.pos[0]))
        self.t += 1
        return self._obs(), reward, False, self.t >= self.max_steps, {}


class ImageEnv(gym.Env):
    """uint8 image observation (HWC); the reward says whether the bright half was chosen."""

    def __init__(self, size: int = 32, max_steps: int = 10, channels: int = 3) -> None:
        self.size, self.max_steps, self.channels = size, max_steps, channels
        self.observation_space = spaces.Box(0, 255, (size, size, channels), np.uint8)
        self.action_space = spaces.Discrete(2)

    def reset(self, *, seed: int | None = None, options: dict | None = None) -> tuple[np.ndarray, dict]:
        super().reset(seed=seed)
        self.t = 0
        return self._obs(), {}

    def _obs(self) -> np.ndarray:
        self.side = int(self.np_random.integers(2))
        img = np.zeros((self.size, self.size, self.channels), np.uint8)
        half = self.size // 2
        img[:, self.side * half : (self.side + 1) * half] = 255
        return img

    def step(self, action: int) -> tuple[np.ndarray, float, bool, bool, dict]:
        reward = float(action == self.side)
        self.t += 1
        return self._obs(), reward, False, self.t >= self.max_steps, {}


class OutOfSpaceEnv(CorridorEnv):
    """Breaks the contract: after ``bad_step`` steps its observation leaves the Box with a
    value no network can take (a finite float beyond the bounds only warns)."""

    def __init__(self, bad_step: int = 3) -> None:
        super().__init__()
        self.bad_step = bad_step

    def step(self, action: int) -> tuple[np.ndarray, float, bool, bool, dict]:
        obs, reward, terminated, truncated, info = super().step(action)
        if self.t >= self.bad_step:
            obs = np.array([np.inf], np.float32)
        return obs, reward, terminated, truncated, info


class BusyEnv(gym.Env):
    """Burns ``step_cost_ms`` of CPU per step (a stand-in for a real simulator's cost)."""

    def __init__(self, step_cost_ms: float = 2.0, max_steps: int = 200) -> None:
        self.step_cost_s, self.max_steps = step_cost_ms / 1000.0, max_steps
        self.observation_space = spaces.Box(-1.0, 1.0, (4,), np.float32)
        self.action_space = spaces.Discrete(2)

    def reset(self, *, seed: int | None = None, options: dict | None = None) -> tuple[np.ndarray, dict]:
        super().reset(seed=seed)
        self.t = 0
        return np.zeros(4, np.float32), {}

    def step(self, action: Any) -> tuple[np.ndarray, float, bool, bool, dict]:
        end = time.perf_counter() + self.step_cost_s
        while time.perf_counter() < end:
            pass
        self.t += 1
        return np.zeros(4, np.float32), 1.0, False, self.t >= self.max_steps, {}


class FlakyEnv(CorridorEnv):
    """Raises from ``step`` on every ``fail_every``-th call (counted per process, so a
    recreated instance goes on counting): a simulator that crashes now and then."""

    calls = 0

    def __init__(self, fail_every: int = 50) -> None:
        super().__init__(length=5, max_steps=30)
        self.fail_every = fail_every

    def step(self, action: int) -> tuple[np.ndarray, float, bool, bool, dict]:
        FlakyEnv.calls += 1
        if FlakyEnv.calls % self.fail_every == 0:
            raise RuntimeError(f"simulated crash at call {FlakyEnv.calls}")
        return super().step(action)


class CueEnv(gym.Env):
    """A memory test: the first observation shows a cue (one of ``num_cues``), the next
    ``delay`` show nothing, and the action at the last step is rewarded +1 when it names the
    cue, else -1 (earlier actions: 0). Without memory the best policy guesses: expected
    return 2 / num_cues - 1; with memory it is 1. Observations: the cue one-hot and a
    "now answer" flag."""

    def __init__(self, delay: int = 4, num_cues: int = 2) -> None:
        self.delay, self.num_cues = delay, num_cues
        self.observation_space = spaces.Box(0.0, 1.0, (num_cues + 1,), np.float32)
        self.action_space = spaces.Discrete(num_cues)

    def reset(self, *, seed: int | None = None, options: dict | None = None) -> tuple[np.ndarray, dict]:
        super().reset(seed=seed)
        self.cue, self.t = int(self.np_random.integers(self.num_cues)), 0
        return self._obs(), {}

    def _obs(self) -> np.ndarray:
        obs = np.zeros(self.num_cues + 1, np.float32)
        if self.t == 0:
            obs[self.cue] = 1.0
        obs[-1] = float(self.t == self.delay)
        return obs

    def step(self, action: int) -> tuple[np.ndarray, float, bool, bool, dict]:
        answer = self.t == self.delay
        reward = (1.0 if int(action) == self.cue else -1.0) if answer else 0.0
        self.t += 1
        return self._obs(), reward, answer, False, {}


TEST_ENVS = {
    "rlfleet/Corridor-v0": CorridorEnv,
    "rlfleet/NestedObs-v0": NestedObsEnv,
    "rlfleet/Image-v0": ImageEnv,
    "rlfleet/Busy-v0": BusyEnv,
    "rlfleet/Flaky-v0": FlakyEnv,
    "rlfleet/OutOfSpace-v0": OutOfSpaceEnv,
    "rlfleet/MaskedChoice-v0": MaskedChoiceEnv,
    "rlfleet/MaskedMaze-v0": MaskedMazeEnv,
    "rlfleet/Cue-v0": CueEnv,
}


def make_test_env(name: str, env_config: dict) -> gym.Env:
    return TEST_ENVS[name](**env_config)


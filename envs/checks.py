"""Catch simulators that break the gymnasium contract at the boundary, with the env's name
and the offending value, instead of a shape error deep inside a loss."""

from __future__ import annotations

from typing import Any, SupportsFloat

import gymnasium as gym
import numpy as np


class EnvContractError(RuntimeError):
    """A simulator returned something its declared spaces or the step API do not allow."""


def _describe(value: Any) -> str:
    text = np.array2string(value, threshold=8, precision=4) if isinstance(value, np.ndarray) else repr(value)
    return text if len(text) <= 200 else text[:197] + "..."


class ContractCheckWrapper(gym.Wrapper):
    """Checks every observation against ``observation_space`` and the reward's type.

    ``Space.contains`` costs a few microseconds; checking every step keeps the error at
    the step that caused it, which is what a user debugging a simulator needs.
    """

    def __init__(self, env: gym.Env, name: str) -> None:
        super().__init__(env)
        self.name = name

    def _check_obs(self, obs: Any, where: str) -> None:
        if not self.observation_space.contains(obs):
            raise EnvContractError(
                f"env {self.name!r} returned an observation outside its observation_space from "
                f"{where}: {_describe(obs)} not in {self.observation_space}"
            )

    def reset(self, **kwargs: Any) -> tuple[Any, dict]:
        obs, info = self.env.reset(**kwargs)
        self._check_obs(obs, "reset()")
        return obs, info

    def step(self, action: Any) -> tuple[Any, SupportsFloat, bool, bool, dict]:
        out = self.env.step(action)
        if len(out) != 5:
            raise EnvContractError(
                f"env {self.name!r}: step() returned {len(out)} values, expected 5 "
                "(obs, reward, terminated, truncated, info)"
            )
        obs, reward, terminated, truncated, info = out
        self._check_obs(obs, "step()")
        if not np.isfinite(reward):
            raise EnvContractError(f"env {self.name!r}: step() returned a non-finite reward {reward!r}")
        return obs, reward, terminated, truncated, info

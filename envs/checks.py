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
    """Checks what one env returns from ``reset`` and the shape of its ``step`` result.

    Observations from ``step`` are checked a whole batch at a time by
    :func:`check_observations` (one ``contains`` per vector step instead of one per env).
    """

    def __init__(self, env: gym.Env, name: str) -> None:
        super().__init__(env)
        self.name = name

    def reset(self, **kwargs: Any) -> tuple[Any, dict]:
        obs, info = self.env.reset(**kwargs)
        if not self.observation_space.contains(obs):
            raise EnvContractError(
                f"env {self.name!r} returned an observation outside its observation_space from reset(): "
                f"{_describe(obs)} not in {self.observation_space}"
            )
        return obs, info

    def step(self, action: Any) -> tuple[Any, SupportsFloat, bool, bool, dict]:
        out = self.env.step(action)
        if len(out) != 5:
            raise EnvContractError(
                f"env {self.name!r}: step() returned {len(out)} values, expected 5 "
                "(obs, reward, terminated, truncated, info)"
            )
        return out


def check_observations(obs: Any, batch_space: gym.Space, single_space: gym.Space, name: str) -> None:
    """Raise naming the env, the sub-env index and the value if any observation of a
    batch from ``step`` lies outside the declared space."""
    if batch_space.contains(obs):
        return
    for i, single in enumerate(gym.vector.utils.iterate(batch_space, obs)):
        if not single_space.contains(single):
            raise EnvContractError(
                f"env {name!r} (sub-env {i}) returned an observation outside its observation_space from step(): "
                f"{_describe(single)} not in {single_space}"
            )
    raise EnvContractError(f"env {name!r} returned observations of the wrong shape or dtype from step()")


def check_rewards(rewards: np.ndarray, name: str) -> None:
    if not np.isfinite(rewards).all():
        i = int(np.flatnonzero(~np.isfinite(rewards))[0])
        raise EnvContractError(f"env {name!r} (sub-env {i}) returned a non-finite reward {rewards[i]!r} from step()")

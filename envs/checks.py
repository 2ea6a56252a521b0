"""Catch simulators that break the gymnasium contract at the boundary, with the env's name
and the offending value, instead of a shape error deep inside a loss."""

from __future__ import annotations

from typing import Any, SupportsFloat

import gymnasium as gym
import numpy as np
from gymnasium import spaces


class EnvContractError(RuntimeError):
    """A simulator returned something its declared spaces or the step API do not allow."""


def describe(value: Any) -> str:
    """A short repr of a value for an error message."""
    text = np.array2string(value, threshold=8, precision=4) if isinstance(value, np.ndarray) else repr(value)
    return text if len(text) <= 200 else text[:197] + "..."


def space_structure(space: gym.Space) -> Any:
    """The space as plain nested dicts/tuples of leaf spaces (what dm-tree understands)."""
    if isinstance(space, spaces.Dict):
        return {key: space_structure(sub) for key, sub in space.spaces.items()}
    if isinstance(space, spaces.Tuple):
        return tuple(space_structure(sub) for sub in space.spaces)
    return space


def structure_problem(value: Any, space: gym.Space) -> str | None:
    """What is wrong with the type, shape or dtype of ``value`` for ``space`` (bounds are
    not looked at: that is the batched ``contains`` of :func:`check_observations`), or
    None. Cheap enough for every sub-env at every step: no pass over the data."""
    if isinstance(space, spaces.Box):
        if not isinstance(value, np.ndarray):
            return f"a {type(value).__name__}, not a numpy array of shape {space.shape}"
        if value.shape != space.shape:
            return f"shape {value.shape} where the space's is {space.shape}"
        if value.dtype != space.dtype and not np.can_cast(value.dtype, space.dtype):
            return f"dtype {value.dtype} where the space's is {space.dtype}"
    elif isinstance(space, spaces.Discrete):
        if not (isinstance(value, (int, np.integer)) or (isinstance(value, np.ndarray) and value.shape == ()
                                                         and np.issubdtype(value.dtype, np.integer))):
            return f"a {type(value).__name__} {describe(value)}, not an integer"
    elif isinstance(space, spaces.Dict):
        if not isinstance(value, dict) or set(value) != set(space.spaces):
            keys = sorted(value) if isinstance(value, dict) else type(value).__name__
            return f"keys {keys} where the space's are {sorted(space.spaces)}"
        for key, sub in space.spaces.items():
            problem = structure_problem(value[key], sub)
            if problem:
                return f"[{key!r}]: {problem}"
    elif isinstance(space, spaces.Tuple):
        if not isinstance(value, tuple) or len(value) != len(space.spaces):
            return f"a {type(value).__name__} where the space is a tuple of {len(space.spaces)}"
        for i, sub in enumerate(space.spaces):
            problem = structure_problem(value[i], sub)
            if problem:
                return f"[{i}]: {problem}"
    return None


def _is_reward(value: Any) -> bool:
    if isinstance(value, np.ndarray):
        return value.size == 1 and np.issubdtype(value.dtype, np.number)
    return isinstance(value, (int, float, np.number)) and not isinstance(value, bool)


class ContractCheckWrapper(gym.Wrapper):
    """Checks what one env returns from ``reset`` and ``step``: the tuples' shapes, the
    observation's type, shape and dtype, the reward's type, that ``info`` is a dict.

    Observation bounds from ``step`` are checked a whole batch at a time by
    :func:`check_observations` (one ``contains`` per vector step instead of one per env).
    """

    def __init__(self, env: gym.Env, name: str) -> None:
        super().__init__(env)
        self.name = name

    def _check_obs(self, obs: Any, where: str) -> None:
        problem = structure_problem(obs, self.observation_space)
        if problem:
            raise EnvContractError(f"env {self.name!r} returned an observation from {where} with {problem}: "
                                   f"{describe(obs)}")

    def _check_info(self, info: Any, where: str) -> None:
        if not isinstance(info, dict):
            raise EnvContractError(f"env {self.name!r}: {where} returned info {describe(info)}, "
                                   f"a {type(info).__name__}, not a dict")

    def reset(self, **kwargs: Any) -> tuple[Any, dict]:
        out = self.env.reset(**kwargs)
        if not isinstance(out, tuple) or len(out) != 2:
            raise EnvContractError(f"env {self.name!r}: reset() must return (obs, info), got {describe(out)}")
        obs, info = out
        self._check_obs(obs, "reset()")
        self._check_info(info, "reset()")
        if not self.observation_space.contains(obs):
            raise EnvContractError(
                f"env {self.name!r} returned an observation outside its observation_space from reset(): "
                f"{describe(obs)} not in {self.observation_space}"
            )
        return obs, info

    def step(self, action: Any) -> tuple[Any, SupportsFloat, bool, bool, dict]:
        out = self.env.step(action)
        if not isinstance(out, tuple) or len(out) != 5:
            count = len(out) if isinstance(out, (tuple, list)) else type(out).__name__
            raise EnvContractError(
                f"env {self.name!r}: step() returned {count} values, expected 5 "
                "(obs, reward, terminated, truncated, info)"
            )
        obs, reward, _, _, info = out
        self._check_obs(obs, "step()")
        if not _is_reward(reward):
            raise EnvContractError(f"env {self.name!r}: step() returned reward {describe(reward)}, "
                                   f"a {type(reward).__name__}, not a number")
        self._check_info(info, "step()")
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
                f"{describe(single)} not in {single_space}"
            )
    raise EnvContractError(f"env {name!r} returned observations of the wrong shape or dtype from step()")


def check_rewards(rewards: np.ndarray, name: str) -> None:
    if not np.isfinite(rewards).all():
        i = int(np.flatnonzero(~np.isfinite(rewards))[0])
        raise EnvContractError(f"env {name!r} (sub-env {i}) returned a non-finite reward {rewards[i]!r} from step()")

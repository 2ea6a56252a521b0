"""Catch simulators that break the gymnasium contract at the boundary, with the env's name
and the offending value, instead of a shape error deep inside a loss."""

from __future__ import annotations

import warnings
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
            refuse_or_warn(obs, self.observation_space, f"env {self.name!r}", "reset()", self.name)
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
    batch from ``step`` lies outside the declared space. A finite float beyond a float
    Box's bounds only warns, once per env: gymnasium's own envs do it (LunarLander-v3's
    height passes 2.5 when the lander climbs), its checker only warns, and a network
    takes the value as it is. NaN, infinity and integers out of range stay errors."""
    if batch_space.contains(obs):
        return
    outside = False
    for i, single in enumerate(gym.vector.utils.iterate(batch_space, obs)):
        if not single_space.contains(single):  # every sub-env: a later one may hold a NaN
            refuse_or_warn(single, single_space, f"env {name!r} (sub-env {i})", "step()", name)
            outside = True
    if not outside:
        raise EnvContractError(f"env {name!r} returned observations of the wrong shape or dtype from step()")


def refuse_or_warn(obs: Any, space: gym.Space, who: str, where: str, name: str) -> None:
    """Raise for an observation outside ``space``, or warn once per env when only finite
    floats lie beyond a float Box's bounds (see :func:`check_observations`)."""
    if not _beyond_float_bounds_only(obs, space):
        raise EnvContractError(f"{who} returned an observation outside its observation_space from {where}: "
                               f"{describe(obs)} not in {space}")
    if name not in _WARNED:
        _WARNED.add(name)
        warnings.warn(f"{who} returned an observation beyond its observation_space's float bounds from {where}: "
                      f"{describe(obs)} not in {space}; used as it is (shown once per env)", RuntimeWarning,
                      stacklevel=3)


_WARNED: set[str] = set()  # envs already warned about float bounds in this process


def _beyond_float_bounds_only(value: Any, space: gym.Space) -> bool:
    """Whether ``value`` would be in ``space`` but for finite values of float Box leaves
    beyond their bounds."""
    if isinstance(space, spaces.Box) and np.issubdtype(space.dtype, np.floating):
        return isinstance(value, np.ndarray) and value.shape == space.shape and bool(np.isfinite(value).all())
    if isinstance(space, spaces.Dict):
        return isinstance(value, dict) and all(_beyond_float_bounds_only(value[k], sub) for k, sub in space.spaces.items())
    if isinstance(space, spaces.Tuple):
        return isinstance(value, tuple) and all(_beyond_float_bounds_only(v, sub) for v, sub in zip(value, space.spaces))
    return space.contains(value)


def check_rewards(rewards: np.ndarray, name: str) -> None:
    if not np.isfinite(rewards).all():
        i = int(np.flatnonzero(~np.isfinite(rewards))[0])
        raise EnvContractError(f"env {name!r} (sub-env {i}) returned a non-finite reward {rewards[i]!r} from step()")

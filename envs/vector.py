"""Vector envs for the env runner: B sub-envs stepped together, what they return checked
once per vector step.

``CheckedVectorEnv`` steps its sub-envs in one plain loop (same-step autoreset, as
gymnasium's ``AutoresetMode.SAME_STEP``) and checks the stacked results a batch at a
time: the dtype and shape of the stacked observation and reward, the observation bounds,
finite rewards. Only when a batch check fails does it look at the sub-envs one by one, to
name the sub-env and the offending value. Stacking is what makes the cheap check exact:
numpy refuses ragged shapes, and a string or ``None`` among the rewards turns the stacked
dtype to text or object instead of being coerced to a float one by one, as a preallocated
float array would.

``AsyncVectorEnv`` gives the same interface over gymnasium's subprocess vector env, for
simulators slow enough that a process per sub-env pays; there each sub-env carries the
per-step :class:`~rlfleet.envs.checks.ContractCheckWrapper`, whose cost the subprocess
round trip dwarfs.
"""

from __future__ import annotations

import dataclasses
from typing import Any, Callable, Sequence

import gymnasium as gym
import numpy as np
import tree
from gymnasium import spaces
from gymnasium.vector import AutoresetMode
from gymnasium.vector.utils import batch_space, iterate

from rlfleet.envs.checks import (EnvContractError, check_observations, check_rewards, describe, refuse_or_warn,
                                 space_structure, structure_problem)


@dataclasses.dataclass
class VectorStep:
    """One step of B sub-envs. A sub-env whose episode ended was reset within the step:
    its row of ``obs`` is the next episode's first observation, and the ended episode's
    last one is in ``final_obs``."""

    obs: Any  # (B, ...) nested like the single observation space
    rewards: np.ndarray  # (B,) float64
    terminated: np.ndarray  # (B,) bool
    truncated: np.ndarray  # (B,) bool
    final_obs: dict[int, Any]  # sub-env index -> last observation of the episode that ended
    env_errors: np.ndarray  # (B,) bool: the episode ended because the simulator raised
    info_of: Callable[[int], dict] = lambda i: {}  # sub-env i's info of this step (its last, when it ended)


def _env_error(info: Any) -> bool:
    return isinstance(info, dict) and "env_error" in info


class CheckedVectorEnv:
    """B sub-envs in one process, results checked a batch at a time (module docstring)."""

    def __init__(self, env_fns: Sequence[Callable[[], gym.Env]], name: str) -> None:
        self.envs = [fn() for fn in env_fns]
        self.name = name
        self.num_envs = len(self.envs)
        self.single_observation_space = self.envs[0].observation_space
        self.single_action_space = self.envs[0].action_space
        self.observation_space = batch_space(self.single_observation_space, self.num_envs)
        self.action_space = batch_space(self.single_action_space, self.num_envs)
        self._leaf_obs = not isinstance(self.single_observation_space, (spaces.Dict, spaces.Tuple))
        self._leaf_actions = not isinstance(self.single_action_space, (spaces.Dict, spaces.Tuple))
        self._leaf_spaces = space_structure(self.single_observation_space)

    # -- the loop ------------------------------------------------------------------------
    def reset(self, *, seed: int | None = None) -> Any:
        """Reset every sub-env (sub-env i seeded ``seed + i``); the stacked observations."""
        obs_list = [self._reset_one(i, seed=None if seed is None else seed + i) for i in range(self.num_envs)]
        return self._stack_obs(obs_list, "reset()")

    def step(self, actions: Any) -> VectorStep:
        obs_list, rewards, terminated, truncated, infos = [], [], [], [], []
        per_env = iter(actions) if self._leaf_actions else iterate(self.action_space, actions)
        for i, (env, action) in enumerate(zip(self.envs, per_env)):
            out = env.step(action)
            try:
                obs, reward, term, trunc, info = out
            except (TypeError, ValueError):
                count = len(out) if isinstance(out, (tuple, list)) else type(out).__name__
                raise EnvContractError(f"env {self.name!r} (sub-env {i}): step() returned {count} values, expected 5 "
                                       "(obs, reward, terminated, truncated, info)") from None
            obs_list.append(obs)
            rewards.append(reward)
            terminated.append(term)
            truncated.append(trunc)
            infos.append(info)
        if set(map(type, infos)) != {dict}:
            i = next(i for i, info in enumerate(infos) if not isinstance(info, dict))
            raise EnvContractError(f"env {self.name!r} (sub-env {i}): step() returned info {describe(infos[i])}, "
                                   f"a {type(infos[i]).__name__}, not a dict")
        rewards_np = self._stack_rewards(rewards)
        term_np, trunc_np = self._stack_flags(terminated, "terminated"), self._stack_flags(truncated, "truncated")
        batch = self._stack_obs(obs_list, "step()")
        done = term_np | trunc_np
        final_obs: dict[int, Any] = {}
        errors = np.zeros(self.num_envs, bool)
        for i in np.flatnonzero(done).tolist():
            final_obs[i] = obs_list[i]
            errors[i] = _env_error(infos[i])
            first = self._reset_one(i)
            self._check_one(first, i, "reset()")
            if self._leaf_obs:
                batch[i] = first
            else:
                tree.map_structure(lambda leaf, x, i=i: leaf.__setitem__(i, x), batch, first)
        return VectorStep(batch, rewards_np, term_np, trunc_np, final_obs, errors, infos.__getitem__)

    def close(self) -> None:
        for env in self.envs:
            env.close()

    # -- stacking with batch checks ------------------------------------------------------
    def _reset_one(self, i: int, seed: int | None = None) -> Any:
        out = self.envs[i].reset() if seed is None else self.envs[i].reset(seed=seed)
        if not isinstance(out, tuple) or len(out) != 2:
            raise EnvContractError(f"env {self.name!r} (sub-env {i}): reset() must return (obs, info), "
                                   f"got {describe(out)}")
        if not isinstance(out[1], dict):
            raise EnvContractError(f"env {self.name!r} (sub-env {i}): reset() returned info {describe(out[1])}, "
                                   f"a {type(out[1]).__name__}, not a dict")
        return out[0]

    def _stack_obs(self, obs_list: list[Any], where: str) -> Any:
        try:
            batch = np.stack(obs_list) if self._leaf_obs else tree.map_structure(lambda *xs: np.stack(xs), *obs_list)
        except (TypeError, ValueError):
            batch = None
        if batch is None or not self.observation_space.contains(batch):
            for i, obs in enumerate(obs_list):
                self._check_one(obs, i, where)  # raises, or warns about floats beyond the bounds
            if batch is None:
                raise EnvContractError(f"env {self.name!r} returned observations from {where} that do not stack "
                                       f"into its observation_space {self.single_observation_space}")
        # An integer observation of a float Box passes ``contains``; the batch takes the space's dtype.
        return tree.map_structure(lambda x, space: x if x.dtype == space.dtype else x.astype(space.dtype),
                                  batch, self._leaf_spaces) if not self._leaf_obs else (
            batch if batch.dtype == self.single_observation_space.dtype
            else batch.astype(self.single_observation_space.dtype))

    def _check_one(self, obs: Any, i: int, where: str) -> None:
        problem = structure_problem(obs, self.single_observation_space)
        if problem:
            raise EnvContractError(f"env {self.name!r} (sub-env {i}) returned an observation from {where} with "
                                   f"{problem}: {describe(obs)}")
        if not self.single_observation_space.contains(obs):
            refuse_or_warn(obs, self.single_observation_space, f"env {self.name!r} (sub-env {i})", where, self.name)

    def _stack_rewards(self, rewards: list[Any]) -> np.ndarray:
        try:
            stacked = np.array(rewards)
        except (TypeError, ValueError):
            stacked = None
        if stacked is None or stacked.ndim != 1 or stacked.dtype.kind not in "iuf":
            i, reward = next((i, r) for i, r in enumerate(rewards) if not _is_number(r))
            raise EnvContractError(f"env {self.name!r} (sub-env {i}): step() returned reward {describe(reward)}, "
                                   f"a {type(reward).__name__}, not a number")
        stacked = stacked.astype(np.float64, copy=False)
        check_rewards(stacked, self.name)
        return stacked

    def _stack_flags(self, flags: list[Any], what: str) -> np.ndarray:
        stacked = np.array(flags)
        if stacked.ndim != 1 or stacked.dtype.kind not in "biu":
            i, flag = next((i, f) for i, f in enumerate(flags) if not isinstance(f, (bool, np.bool_, int, np.integer)))
            raise EnvContractError(f"env {self.name!r} (sub-env {i}): step() returned {what}={describe(flag)}, "
                                   f"a {type(flag).__name__}, not a bool")
        return stacked.astype(bool, copy=False)


def _is_number(value: Any) -> bool:
    if isinstance(value, np.ndarray):
        return value.ndim == 0 and value.dtype.kind in "iuf"
    return isinstance(value, (int, float, np.integer, np.floating)) and not isinstance(value, (bool, np.bool_))


class AsyncVectorEnv:
    """gymnasium's subprocess vector env behind the :class:`CheckedVectorEnv` interface."""

    def __init__(self, env_fns: Sequence[Callable[[], gym.Env]], name: str) -> None:
        self.env = gym.vector.AsyncVectorEnv(list(env_fns), autoreset_mode=AutoresetMode.SAME_STEP)
        self.name = name
        self.num_envs = self.env.num_envs
        self.single_observation_space = self.env.single_observation_space
        self.single_action_space = self.env.single_action_space
        self.observation_space, self.action_space = self.env.observation_space, self.env.action_space

    def reset(self, *, seed: int | None = None) -> Any:
        return self.env.reset(seed=seed)[0]

    def step(self, actions: Any) -> VectorStep:
        obs, rewards, terminated, truncated, info = self.env.step(actions)
        check_observations(obs, self.observation_space, self.single_observation_space, self.name)
        check_rewards(rewards, self.name)
        done = terminated | truncated
        final_obs = {i: info["final_obs"][i] for i in np.flatnonzero(done).tolist()}
        final_info = info.get("final_info") or {}
        errors = np.asarray(final_info.get("_env_error", np.zeros(self.num_envs, bool)), bool) & done

        def info_of(i: int) -> dict:  # gymnasium's vector info: key -> (B,) values, "_key" -> which are set
            source = final_info if done[i] else info
            return {k: v[i] for k, v in source.items()
                    if not k.startswith("_") and ("_" + k not in source or source["_" + k][i])}

        return VectorStep(obs, np.asarray(rewards, np.float64), terminated, truncated, final_obs, errors, info_of)

    def close(self) -> None:
        self.env.close()

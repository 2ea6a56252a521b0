"""Nested observation and action spaces, flattened with dm-tree.

dm-tree flattens dicts in sorted-key order; :func:`leaf_spaces` uses the same order, so the
i-th leaf of an observation always meets the i-th leaf space.
"""

from __future__ import annotations

from typing import Any

import gymnasium as gym
import numpy as np
import tree
from gymnasium import spaces

from rlfleet.envs.checks import space_structure
from rlfleet.rl.core import ACTION_MASK

OBS_LEAVES = (spaces.Box, spaces.Discrete, spaces.MultiDiscrete, spaces.MultiBinary)
ACTION_LEAVES = (spaces.Box, spaces.Discrete, spaces.MultiDiscrete)


class UnsupportedSpaceError(ValueError):
    """A space the RLModule has no encoder or head for."""


def leaf_spaces(space: gym.Space) -> list[gym.Space]:
    return tree.flatten(space_structure(space))


def is_image(space: gym.Space) -> bool:
    """A 3-D Box is an image (HWC or CHW); anything else is encoded as a vector."""
    return isinstance(space, spaces.Box) and len(space.shape) == 3


FAMILIES = {
    "discrete": "discrete actions, vector observations",
    "continuous": "continuous actions, vector observations",
    "image": "image observations",
}


def space_family(observation_space: gym.Space, action_space: gym.Space) -> str:
    """The task family whose defaults a config takes (a key of ``FAMILIES``): any image
    leaf makes it ``image``, else any Box action leaf ``continuous``, else ``discrete``."""
    if any(is_image(s) for s in leaf_spaces(observation_space)):
        return "image"
    if any(isinstance(s, spaces.Box) for s in leaf_spaces(action_space)):
        return "continuous"
    return "discrete"


def mask_space(observation_space: gym.Space) -> gym.Space | None:
    """The observation's action-mask space (rl/core.py, "Action masks"), or None."""
    if isinstance(observation_space, spaces.Dict):
        return observation_space.spaces.get(ACTION_MASK)
    return None


def encoder_space(observation_space: gym.Space, *, encode_mask: bool) -> gym.Space:
    """What the encoder reads: the observation without its action mask, unless
    ``encode_mask`` (or the mask is all there is)."""
    if mask_space(observation_space) is None or encode_mask or len(observation_space.spaces) == 1:
        return observation_space
    return spaces.Dict({key: sub for key, sub in observation_space.spaces.items() if key != ACTION_MASK})


def mask_segments(action_space: gym.Space) -> list[int]:
    """The sizes of the action mask's parts: [n] for Discrete, nvec for MultiDiscrete."""
    return [int(action_space.n)] if isinstance(action_space, spaces.Discrete) else action_space.nvec.tolist()


def rows_without_legal_action(mask: np.ndarray, segments: list[int]) -> np.ndarray:
    """Indices of the rows of ``mask`` (B, sum(segments)) where some (sub-)action has no
    legal choice."""
    legal = mask > 0
    ok = np.logical_and.reduce([part.any(-1) for part in np.split(legal, np.cumsum(segments)[:-1], -1)])
    return np.flatnonzero(~ok)


def _check_mask(observation_space: gym.Space, action_space: gym.Space, env_name: str) -> None:
    mask = mask_space(observation_space)
    if mask is None:
        return
    if not isinstance(action_space, (spaces.Discrete, spaces.MultiDiscrete)):
        raise UnsupportedSpaceError(f"env {env_name!r}: an action_mask needs a Discrete or MultiDiscrete action "
                                    f"space, got {action_space}")
    size = sum(mask_segments(action_space))
    if not isinstance(mask, (spaces.Box, spaces.MultiBinary)) or tuple(mask.shape) != (size,):
        parts = ": the sub-actions' masks one after the other" if isinstance(action_space, spaces.MultiDiscrete) else ""
        raise UnsupportedSpaceError(f"env {env_name!r}: action_mask space {mask} must be a Box or MultiBinary of "
                                    f"shape ({size},){parts}, one entry per action of {action_space}")


def check_spaces(observation_space: gym.Space, action_space: gym.Space, env_name: str) -> None:
    """Refuse, with the env's name and the leaf, spaces the module cannot encode or act in."""
    _check_mask(observation_space, action_space, env_name)
    for leaf in leaf_spaces(observation_space):
        if not isinstance(leaf, OBS_LEAVES) or (isinstance(leaf, spaces.Box) and len(leaf.shape) > 3):
            raise UnsupportedSpaceError(
                f"env {env_name!r}: observation space {leaf} is not supported "
                "(supported leaves: Box up to 3-D, Discrete, MultiDiscrete, MultiBinary, nested in Dict/Tuple)"
            )
    for leaf in leaf_spaces(action_space):
        bad_box = isinstance(leaf, spaces.Box) and len(leaf.shape) != 1
        bad_md = isinstance(leaf, spaces.MultiDiscrete) and len(leaf.nvec.shape) != 1
        if not isinstance(leaf, ACTION_LEAVES) or bad_box or bad_md:
            raise UnsupportedSpaceError(
                f"env {env_name!r}: action space {leaf} is not supported "
                "(supported leaves: Discrete, 1-D MultiDiscrete, 1-D Box, nested in Dict/Tuple)"
            )


def actions_to_env(leaves: list[np.ndarray], action_space: gym.Space) -> Any:
    """Batched action leaves -> what a vector env of ``action_space`` expects.

    Box actions are clipped to their bounds here, at the env boundary only: the batch keeps
    the unclipped sample so its log-probability stays exact.
    """
    if type(action_space) is spaces.Discrete and action_space.start == 0:
        return leaves[0]  # the common case, once per env step
    out = []
    for leaf, space in zip(leaves, leaf_spaces(action_space)):
        if isinstance(space, spaces.Box):
            leaf = np.clip(leaf, space.low, space.high)
        elif isinstance(space, (spaces.Discrete, spaces.MultiDiscrete)) and np.any(space.start != 0):
            leaf = leaf + space.start  # the policy samples indices 0..n-1; the env counts from start
        out.append(leaf)
    if isinstance(action_space, (spaces.Dict, spaces.Tuple)):
        return tree.unflatten_as(space_structure(action_space), out)
    return out[0]

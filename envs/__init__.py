"""Simulators: the registry that turns a user's ``env`` into a creator, contract checks,
vector envs, small test environments, and external simulators. Imports nothing else of
ours.

Names are loaded on first use (PEP 562), so ``import rlfleet.envs.external`` (the
external-simulator client) needs only numpy and msgpack, not gymnasium.
"""

from __future__ import annotations

import importlib
from typing import Any

_EXPORTS = {
    "make_atari": "atari", "register_atari_envs": "atari",
    "ContractCheckWrapper": "checks", "EnvContractError": "checks", "check_observations": "checks",
    "check_rewards": "checks",
    "EnvFailedError": "recovery", "RecreateOnError": "recovery",
    "EnvConfigError": "registry", "EnvCreator": "registry", "EnvNotFoundError": "registry",
    "UserModuleError": "registry", "import_user_module": "registry", "make_env_creator": "registry",
    "probe_env": "registry", "register_env": "registry", "registered_envs": "registry",
    "shippable": "registry", "user_code_modules": "registry", "without_text": "registry",
}

__all__ = sorted(_EXPORTS)


def __getattr__(name: str) -> Any:
    if name not in _EXPORTS:
        raise AttributeError(f"module 'rlfleet.envs' has no attribute {name!r}")
    return getattr(importlib.import_module(f"rlfleet.envs.{_EXPORTS[name]}"), name)

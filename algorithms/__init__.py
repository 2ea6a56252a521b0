"""Algorithms by name. Each lives in its own folder: config, loss, training step."""

from __future__ import annotations

import importlib

from rlfleet.rl.config import AlgorithmConfig, closest

# name -> "module:ConfigClass"; imported on demand so `--algo ppo` never imports the others.
ALGORITHMS: dict[str, str] = {
    "ppo": "rlfleet.algorithms.ppo:PPOConfig",
    "dqn": "rlfleet.algorithms.dqn:DQNConfig",
    "impala": "rlfleet.algorithms.impala:IMPALAConfig",
    "sac": "rlfleet.algorithms.sac:SACConfig",
    "td3": "rlfleet.algorithms.td3:TD3Config",
    "grpo": "rlfleet.algorithms.grpo:GRPOConfig",
    "lm-ppo": "rlfleet.algorithms.ppo.lm:LMPPOConfig",
}


# Variants for language-model post-training, chosen when ``env`` names a text env.
LM_ALGORITHMS: dict[str, str] = {
    "ppo": "rlfleet.algorithms.ppo.lm:LMPPOConfig",
}


class UnknownAlgorithmError(ValueError):
    """``--algo`` names no algorithm we have."""


def algorithms_supporting(space_type: type) -> list[str]:
    """Names of the algorithms whose configs accept actions of ``space_type``."""
    return [name for name in sorted(ALGORITHMS) if space_type in get_config_class(name).action_space_types]


def refusal(algo: str, spec: object, need: str) -> Exception:
    """The one-line error for an env whose action space ``algo`` cannot act in: what it
    needs, what the env has, and the registry's algorithms that can."""
    from rlfleet.rl.spaces import UnsupportedSpaceError

    space = spec.action_space  # type: ignore[attr-defined]
    others = [name for name in algorithms_supporting(type(space)) if name != algo.lower()]
    return UnsupportedSpaceError(f"{algo} needs {need}; env {spec.env_name!r} has {space}. "  # type: ignore[attr-defined]
                                 f"Algorithms for {type(space).__name__} actions: {', '.join(others)}")


def get_config_class(name: str, env: object = None) -> type[AlgorithmConfig]:
    """The config class of algorithm ``name``; its LM variant when ``env`` is a text env."""
    key = name.lower()
    if key in LM_ALGORITHMS and isinstance(env, str):
        from rlfleet.envs.text_tasks import registered_text_envs

        if env in registered_text_envs():
            module, cls = LM_ALGORITHMS[key].split(":")
            return getattr(importlib.import_module(module), cls)
    if key not in ALGORITHMS:
        raise UnknownAlgorithmError(
            f"unknown algorithm {name!r}{closest(key, ALGORITHMS)} (available: {', '.join(sorted(ALGORITHMS))})"
        )
    module, cls = ALGORITHMS[key].split(":")
    return getattr(importlib.import_module(module), cls)

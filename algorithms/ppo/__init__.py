"""Proximal Policy Optimization (Schulman et al. 2017) with GAE.

Names are loaded on first use (PEP 562): a runner process unpickling a ``PPOConfig``
imports the config alone, not the learner's torch.
"""

from __future__ import annotations

import importlib
from typing import Any

_EXPORTS = {"PPO": "algorithm", "PPOConfig": "config", "PPOLearner": "learner", "ppo_loss": "learner"}

__all__ = sorted(_EXPORTS)


def __getattr__(name: str) -> Any:
    if name not in _EXPORTS:
        raise AttributeError(f"module 'rlfleet.algorithms.ppo' has no attribute {name!r}")
    return getattr(importlib.import_module(f"rlfleet.algorithms.ppo.{_EXPORTS[name]}"), name)

"""IMPALA (Espeholt et al. 2018): asynchronous actors, V-trace off-policy correction.

Names are loaded on first use (PEP 562): a runner process unpickling an ``IMPALAConfig``
imports the config alone, not the learner's torch.
"""

from __future__ import annotations

import importlib
from typing import Any

_EXPORTS = {"IMPALA": "algorithm", "learner_batch": "algorithm", "IMPALAConfig": "config",
            "IMPALALearner": "learner", "impala_loss": "learner"}

__all__ = sorted(_EXPORTS)


def __getattr__(name: str) -> Any:
    if name not in _EXPORTS:
        raise AttributeError(f"module 'rlfleet.algorithms.impala' has no attribute {name!r}")
    return getattr(importlib.import_module(f"rlfleet.algorithms.impala.{_EXPORTS[name]}"), name)

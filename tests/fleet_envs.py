"""Envs and actors for the fleet tests, in a module Ray workers can import.

Ray unpickles a factory or an env class in the worker process by its module path, so they
cannot live in a test file (pytest imports those under their bare file name); every Ray
instance in the tests puts the repository root on the workers' ``PYTHONPATH``, which makes
``tests.fleet_envs`` importable there.
"""

from __future__ import annotations

import os
import threading
from typing import Any

import numpy as np

from envs.testing import CorridorEnv


class HangingEnv(CorridorEnv):
    """A corridor whose ``step`` blocks forever from its ``hang_after``-th call on (counted
    per instance, so every fresh runner hangs again): a simulator that deadlocks."""

    def __init__(self, hang_after: int = 0) -> None:
        super().__init__(length=5, max_steps=30)
        self.hang_after, self.calls = hang_after, 0

    def step(self, action: int) -> tuple[np.ndarray, float, bool, bool, dict]:
        self.calls += 1
        if self.calls > self.hang_after:
            threading.Event().wait()  # never set: only killing the process ends this
        return super().step(action)


class HangOnceEnv(CorridorEnv):
    """A corridor that hangs forever in the ``step`` that finds the file ``flag_path`` and
    manages to delete it. Deleting is atomic, so across all runner processes exactly one
    sub-env hangs, once, after the test creates the file."""

    def __init__(self, flag_path: str) -> None:
        super().__init__(length=5, max_steps=30)
        self.flag_path = flag_path

    def step(self, action: int) -> tuple[np.ndarray, float, bool, bool, dict]:
        try:
            os.remove(self.flag_path)
        except FileNotFoundError:
            return super().step(action)
        threading.Event().wait()
        raise AssertionError("unreachable")


class Probe:
    """A stand-in actor: reports its index, what it was handed, and can fail or stall."""

    def __init__(self, index: int) -> None:
        self.index = index
        self.stopped_file: str | None = None

    def whoami(self) -> int:
        return self.index

    def add(self, a: int, b: int) -> int:
        return self.index * 100 + a + b

    def describe(self, obj: Any) -> dict[str, Any]:
        """What arrived: its type, and for a dict of arrays whether each is a read-only
        numpy array (what Ray's object store hands out, zero-copy) and its sum."""
        out: dict[str, Any] = {"type": type(obj).__name__}
        if isinstance(obj, dict):
            out["arrays"] = {
                k: (type(v).__name__, bool(v.flags.writeable), float(np.sum(v)))
                for k, v in obj.items()
                if isinstance(v, np.ndarray)
            }
        return out

    def fail(self, message: str) -> None:
        raise ValueError(f"actor {self.index}: {message}")

    def sleep(self, seconds: float) -> int:
        threading.Event().wait(seconds)
        return self.index

    def mark_stopped_in(self, path: str) -> None:
        self.stopped_file = path

    def stop(self) -> None:
        if self.stopped_file is not None:
            with open(f"{self.stopped_file}.{self.index}", "w", encoding="utf-8") as f:
                f.write("stopped")


class SlowProbe(Probe):
    """A probe whose actor ``index`` in ``slow`` sleeps ``seconds`` in ``whoami``."""

    def __init__(self, index: int, slow: tuple[int, ...] = (), seconds: float = 3600.0) -> None:
        super().__init__(index)
        self.slow, self.seconds = slow, seconds

    def whoami(self) -> int:
        if self.index in self.slow:
            threading.Event().wait(self.seconds)
        return self.index


class SlowProbeFactory:
    """Picklable ``factory(index) -> SlowProbe``."""

    def __init__(self, slow: tuple[int, ...], seconds: float = 3600.0) -> None:
        self.slow, self.seconds = slow, seconds

    def __call__(self, index: int) -> SlowProbe:
        return SlowProbe(index, self.slow, self.seconds)

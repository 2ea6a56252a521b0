"""The only package that knows a distributed engine exists.

Everything above it sees one small interface (:class:`Runtime`): build a group of
actors from a factory, call a method on all or some of them, ``put`` an object once and
hand its reference to many actors. The ``local`` backend runs actors as plain objects
in this process (debugging, unit tests, ``num_env_runners=0``); the ``ray`` backend runs
them as Ray actors (added with the fleet).
"""

import contextlib
from typing import Any, Iterator

from rlfleet.runtime.base import (
    ActorGroup,
    ActorInitError,
    CallResult,
    ClusterUnreachableError,
    Future,
    InsufficientResourcesError,
    ObjectRef,
    Runtime,
)
from rlfleet.runtime.local import LocalRuntime

__all__ = ["ActorGroup", "ActorInitError", "CallResult", "ClusterUnreachableError", "InsufficientResourcesError", "Future", "ObjectRef", "Runtime", "LocalRuntime", "make_runtime", "prestarted"]


_starting: Any = None  # the Ray runtime whose start ``prestarted`` began, until taken


@contextlib.contextmanager
def prestarted(kind: str, **options: object) -> Iterator[None]:
    """Within the block, ``make_runtime(kind, **options)`` returns a runtime whose start
    began on entry, on a thread of its own: ``ray.init`` spends about 3 s waiting on Ray's
    own processes, which the block (importing torch, building the modules) overlaps. One
    the block did not take (it failed first) is shut down when the block ends. The local
    runtime starts in no time and gets no head start."""
    global _starting
    if kind != "ray" or _starting is not None:
        yield
        return
    from rlfleet.runtime.ray_backend import StartingRayRuntime

    _starting = StartingRayRuntime(options)
    try:
        yield
    finally:
        left, _starting = _starting, None
        if left is not None:
            left.discard()


def make_runtime(kind: str = "local", **options: object) -> Runtime:
    """Build the runtime backend named ``kind`` ("local" or "ray")."""
    global _starting
    if kind == "local":
        return LocalRuntime()
    if kind == "ray":
        if _starting is not None:
            starting, _starting = _starting, None
            if starting.options == options:
                return starting.result()
            starting.discard()  # started for other options: Ray cannot be asked twice
        # Imported lazily: the local path must never pay for importing Ray.
        from rlfleet.runtime.ray_backend import RayRuntime

        return RayRuntime(**options)  # type: ignore[arg-type]
    raise ValueError(f"unknown runtime {kind!r}; choose 'local' or 'ray'")

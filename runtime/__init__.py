"""The only package that knows a distributed engine exists.

Everything above it sees one small interface (:class:`Runtime`): build a group of
actors from a factory, call a method on all or some of them, ``put`` an object once and
hand its reference to many actors. The ``local`` backend runs actors as plain objects
in this process (debugging, unit tests, ``num_env_runners=0``); the ``ray`` backend runs
them as Ray actors (added with the fleet).
"""

from rlfleet.runtime.base import (
    ActorGroup,
    CallResult,
    ClusterUnreachableError,
    Future,
    InsufficientResourcesError,
    ObjectRef,
    Runtime,
)
from rlfleet.runtime.local import LocalRuntime

__all__ = ["ActorGroup", "CallResult", "ClusterUnreachableError", "InsufficientResourcesError", "Future", "ObjectRef", "Runtime", "LocalRuntime", "make_runtime"]


def make_runtime(kind: str = "local", **options: object) -> Runtime:
    """Build the runtime backend named ``kind`` ("local" or "ray")."""
    if kind == "local":
        return LocalRuntime()
    if kind == "ray":
        # Imported lazily: the local path must never pay for importing Ray.
        from rlfleet.runtime.ray_backend import RayRuntime

        return RayRuntime(**options)  # type: ignore[arg-type]
    raise ValueError(f"unknown runtime {kind!r}; choose 'local' or 'ray'")

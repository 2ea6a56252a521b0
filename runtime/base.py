"""The runtime interface: actor groups and the object store, engine-agnostic."""

from __future__ import annotations

import abc
import dataclasses
from typing import Any, Callable, Iterator, Sequence


class ClusterUnreachableError(ConnectionError):
    """Nothing answers at the cluster address given."""


class InsufficientResourcesError(RuntimeError):
    """Actors ask for more CPUs or GPUs than the runtime has free (and none will come)."""


class ActorInitError(RuntimeError):
    """An actor's constructor raised: its message is the constructor's error, one line
    (a restart from the same factory would raise it again)."""


LOOPBACK = ("127.0.0.1", "localhost", "::1")
"""Hosts only this machine reaches: a server bound anywhere else needs a token."""


class BadRequest(ValueError):
    """A request a served model refuses: answered with HTTP 400 and this one-line message."""


class ObjectRef(abc.ABC):
    """A handle to an object put once into the store; actors receive the object itself."""


@dataclasses.dataclass
class CallResult:
    """The outcome of calling a method on one actor of a group."""

    index: int
    value: Any = None
    error: BaseException | None = None

    @property
    def ok(self) -> bool:
        return self.error is None


@dataclasses.dataclass(eq=False)
class Future:
    """A call submitted to one actor and not yet collected (hashable by identity)."""

    index: int
    handle: Any
    submitted_at: float


class ActorGroup(abc.ABC):
    """N actors of one class, built from a factory ``factory(index) -> actor``.

    Arguments that are :class:`ObjectRef` are resolved before the method runs, so an actor
    never sees a reference, and an object put once is shared, not copied per actor.
    """

    @property
    @abc.abstractmethod
    def size(self) -> int: ...

    @abc.abstractmethod
    def call(
        self,
        method: str,
        *args: Any,
        indices: Sequence[int] | None = None,
        timeout_s: float | None = None,
    ) -> list[CallResult]:
        """Call ``method(*args)`` on the chosen actors (all by default), wait for all."""

    @abc.abstractmethod
    def call_each(
        self, method: str, args_per_actor: Sequence[tuple], *, timeout_s: float | None = None
    ) -> list[CallResult]:
        """Call ``method(*args_per_actor[i])`` on actor i, all at once (e.g. batch shards)."""

    @abc.abstractmethod
    def submit(self, index: int, method: str, *args: Any) -> Future:
        """Start ``method(*args)`` on actor ``index`` without waiting. Calls to one actor
        run in the order submitted."""

    @abc.abstractmethod
    def wait(self, futures: Sequence[Future], *, timeout_s: float | None) -> tuple[list[tuple[Future, CallResult]], list[Future]]:
        """Block until at least one of ``futures`` is done (or the timeout); return every
        done one with its result, and the ones still pending."""

    def restart(self, index: int) -> None:
        """Replace actor ``index`` with a fresh one built by the factory."""
        raise NotImplementedError(f"{type(self).__name__} cannot restart actors")

    def kill(self, index: int) -> None:
        """End actor ``index`` for good (its index stays; calls to it fail)."""

    @abc.abstractmethod
    def shutdown(self) -> None: ...


class Runtime(abc.ABC):
    """Creates actor groups and owns the object store."""

    name: str

    @abc.abstractmethod
    def create_group(
        self,
        factory: Callable[[int], Any],
        count: int,
        *,
        num_cpus: float = 1.0,
        num_gpus: float = 0.0,
        name: str = "Actor",
    ) -> ActorGroup:
        """``count`` actors built by ``factory(index)``; ``name`` titles their processes."""

    @abc.abstractmethod
    def put(self, obj: Any) -> ObjectRef: ...

    @abc.abstractmethod
    def map_unordered(self, fn: Callable[[Any], Any], items: Sequence[Any], *, num_cpus: float = 1.0) -> Iterator[tuple[int, Any]]:
        """Run ``fn(item)`` for every item as independent tasks; yield (index, result) as
        each finishes (locally: one after another, in order)."""

    @abc.abstractmethod
    def shutdown(self) -> None: ...

"""The local backend: actors are plain objects in this process, calls run in order."""

from __future__ import annotations

from typing import Any, Callable, Iterator, Sequence

import time

from rlfleet.runtime.base import ActorGroup, CallResult, Future, ObjectRef, Runtime


class LocalRef(ObjectRef):
    def __init__(self, obj: Any) -> None:
        self.obj = obj


def _resolve(arg: Any) -> Any:
    return arg.obj if isinstance(arg, LocalRef) else arg


class LocalActorGroup(ActorGroup):
    def __init__(self, factory: Callable[[int], Any], count: int) -> None:
        self.factory = factory
        self.actors = [factory(i) for i in range(count)]
        self.num_restarts = 0

    @property
    def size(self) -> int:
        return len(self.actors)

    def call(
        self,
        method: str,
        *args: Any,
        indices: Sequence[int] | None = None,
        timeout_s: float | None = None,
    ) -> list[CallResult]:
        # Errors propagate: in-process there is no fault to tolerate, only a bug to see.
        resolved = [_resolve(a) for a in args]
        chosen = range(len(self.actors)) if indices is None else indices
        return [CallResult(i, getattr(self.actors[i], method)(*resolved)) for i in chosen]

    def call_each(
        self, method: str, args_per_actor: Sequence[tuple], *, timeout_s: float | None = None
    ) -> list[CallResult]:
        return [
            CallResult(i, getattr(actor, method)(*[_resolve(a) for a in args]))
            for i, (actor, args) in enumerate(zip(self.actors, args_per_actor))
        ]

    def submit(self, index: int, method: str, *args: Any) -> Future:
        # In-process there is nothing to overlap with: run now, hand back the finished call.
        result = CallResult(index, getattr(self.actors[index], method)(*[_resolve(a) for a in args]))
        return Future(index, result, time.monotonic())

    def wait(self, futures: Sequence[Future], *, timeout_s: float | None) -> tuple[list[tuple[Future, CallResult]], list[Future]]:
        return [(f, f.handle) for f in futures], []

    def restart(self, index: int) -> None:
        stop = getattr(self.actors[index], "stop", None)
        if stop is not None:
            stop()
        self.actors[index] = self.factory(index)
        self.num_restarts += 1

    def shutdown(self) -> None:
        for actor in self.actors:
            stop = getattr(actor, "stop", None)
            if stop is not None:
                stop()
        self.actors = []


class LocalRuntime(Runtime):
    name = "local"

    def __init__(self) -> None:
        self.num_puts = 0

    def create_group(
        self,
        factory: Callable[[int], Any],
        count: int,
        *,
        num_cpus: float = 1.0,
        num_gpus: float = 0.0,
        name: str = "Actor",
    ) -> LocalActorGroup:
        return LocalActorGroup(factory, count)

    def map_unordered(self, fn: Callable[[Any], Any], items: Sequence[Any], *, num_cpus: float = 1.0) -> Iterator[tuple[int, Any]]:
        for i, item in enumerate(items):
            yield i, fn(item)

    def put(self, obj: Any) -> LocalRef:
        self.num_puts += 1
        return LocalRef(obj)

    def shutdown(self) -> None:
        pass

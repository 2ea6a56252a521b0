"""The Ray backend: actors in their own processes, weights through Ray's object store.

``ray.init`` starts an embedded local instance with exactly the CPUs and GPUs asked for
(dashboard off unless asked), or joins a running cluster when given an ``address``; only
an instance this runtime started is shut down by it.
"""

from __future__ import annotations

import contextlib
import logging
import os
import re
import socket
import signal
import subprocess
import sys
import threading
import time
from typing import Any, Callable, Iterator, Sequence

import ray
from ray.exceptions import RayActorError, RayError, RayTaskError

from rlfleet.runtime.actor_output import OutputCapture, WithOutput, print_output
from rlfleet.runtime.lean_start import lean_instance, lean_start
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


class RayRef(ObjectRef):
    def __init__(self, ref: ray.ObjectRef) -> None:
        self.ref = ref


class _ActorHost:
    """Hosts one object built by ``factory(index)`` inside a Ray actor process.

    Subclassed per group under the hosted class's name (``EnvRunner``, ``Learner``), because
    Ray titles an actor's process ``ray::<ClassName>``, which is what operators see in ``ps``.
    With ``forward_output`` (a lean instance has no log monitor), replies carry what the
    process wrote (runtime/actor_output.py).
    """

    forward_output = False

    def __init__(self, factory: Callable[[int], Any], index: int) -> None:
        self.output = OutputCapture.create() if self.forward_output else None
        with self._output_noted_in_errors():
            self.obj = factory(index)

    def _reply(self, value: Any, final: bool = False) -> Any:
        output = self.output.take(final) if self.output is not None else None
        return value if output is None else WithOutput(value, output)

    @contextlib.contextmanager
    def _output_noted_in_errors(self) -> Iterator[None]:
        """An error raised in the block carries what the actor printed on the way to it."""
        try:
            yield
        except BaseException as e:
            output = self.output.take(final=True) if self.output is not None else None
            if output is not None:
                e.add_note(f"output of the {type(self).__name__} before the error:\n{output.text()}")
            raise

    def call(self, method: str, *args: Any) -> Any:
        with self._output_noted_in_errors():
            value = getattr(self.obj, method)(*args)
        return self._reply(value)

    def stop(self) -> Any:
        stop = getattr(self.obj, "stop", None)
        if stop is not None:
            with self._output_noted_in_errors():
                stop()
        return self._reply(None, final=True)

    def pid(self) -> int:
        return os.getpid()

    def node_ip(self) -> str:
        return ray.util.get_node_ip_address()


def _unwrap(arg: Any) -> Any:
    # A top-level ray.ObjectRef argument is resolved by Ray in the actor from the object
    # store: the object is stored once and read (zero-copy for numpy) by every actor.
    return arg.ref if isinstance(arg, RayRef) else arg


_RAISED = re.compile(r"^[A-Za-z_][\w.]*(Error|Exception|Exit|Interrupt)\b(: |$)")


def _error_of(exc: BaseException) -> BaseException:
    if isinstance(exc, RayTaskError):
        return exc.as_instanceof_cause()
    if isinstance(exc, RayActorError) and getattr(exc, "actor_init_failed", False):
        # Ray's message is its own preamble, then the constructor's traceback and the
        # actor's output noted after it: from the line naming what the constructor raised
        # (say a module a worker cannot import) on
        lines = [line.strip() for line in str(exc).splitlines() if line.strip()]
        raised = [i for i, line in enumerate(lines) if _RAISED.match(line)]
        return ActorInitError("\n".join(lines[raised[-1]:] if raised else lines[-1:]) or type(exc).__name__)
    return exc


class RayActorGroup(ActorGroup):
    def __init__(
        self, factory: Callable[[int], Any], count: int, *, num_cpus: float, num_gpus: float, name: str,
        forward_output: bool = False,
    ) -> None:
        self.name = name
        host_cls = type(name, (_ActorHost,), {"__module__": __name__, "forward_output": forward_output})
        self.remote_cls = ray.remote(num_cpus=num_cpus, num_gpus=num_gpus, max_restarts=0)(host_cls)
        self.factory = factory
        self.actors = [self.remote_cls.remote(factory, i) for i in range(count)]
        self.num_restarts = 0

    @property
    def size(self) -> int:
        return len(self.actors)

    def _received(self, index: int, value: Any) -> Any:
        """A reply's value; the output it carries is printed under the actor's name."""
        if isinstance(value, WithOutput):
            print_output(value.output, f"({self.name} {index} pid={value.output.pid})")
            return value.value
        return value

    def call(
        self,
        method: str,
        *args: Any,
        indices: Sequence[int] | None = None,
        timeout_s: float | None = None,
    ) -> list[CallResult]:
        raw = [_unwrap(a) for a in args]
        chosen = list(range(len(self.actors))) if indices is None else list(indices)
        futures = [self.actors[i].call.remote(method, *raw) for i in chosen]
        return self.collect(chosen, futures, timeout_s)

    def submit(self, index: int, method: str, *args: Any) -> Future:
        handle = self.actors[index].call.remote(method, *[_unwrap(a) for a in args])
        return Future(index, handle, time.monotonic())

    def wait(self, futures: Sequence[Future], *, timeout_s: float | None) -> tuple[list[tuple[Future, CallResult]], list[Future]]:
        if not futures:
            return [], []
        by_handle = {f.handle: f for f in futures}
        handles = list(by_handle)
        ready, _ = ray.wait(handles, num_returns=1, timeout=timeout_s)
        if ready:  # take everything else that is already done too, without waiting
            ready, _ = ray.wait(handles, num_returns=len(handles), timeout=0)
        done = []
        for handle in ready:
            future = by_handle[handle]
            try:
                done.append((future, CallResult(future.index, self._received(future.index, ray.get(handle)))))
            except (RayActorError, RayTaskError, RayError) as e:
                done.append((future, CallResult(future.index, error=_error_of(e))))
        ready_set = set(ready)
        return done, [f for f in futures if f.handle not in ready_set]

    def call_each(
        self, method: str, args_per_actor: Sequence[tuple], *, timeout_s: float | None = None
    ) -> list[CallResult]:
        futures = [a.call.remote(method, *[_unwrap(x) for x in args]) for a, args in zip(self.actors, args_per_actor)]
        return self.collect(list(range(len(futures))), futures, timeout_s)

    def collect(self, chosen: list[int], futures: list[Any], timeout_s: float | None) -> list[CallResult]:
        """Wait for ``futures`` (one per actor index in ``chosen``) up to ``timeout_s``."""
        ready, _ = ray.wait(futures, num_returns=len(futures), timeout=timeout_s)
        ready_set = set(ready)
        results = []
        for i, fut in zip(chosen, futures):
            if fut not in ready_set:
                results.append(CallResult(i, error=TimeoutError(f"actor {i} did not answer within {timeout_s} s")))
                continue
            try:
                results.append(CallResult(i, self._received(i, ray.get(fut))))
            except (RayActorError, RayTaskError, RayError) as e:
                results.append(CallResult(i, error=_error_of(e)))
        return results

    def pids(self) -> list[int]:
        return ray.get([a.pid.remote() for a in self.actors])

    def kill(self, index: int) -> None:
        ray.kill(self.actors[index], no_restart=True)

    def restart(self, index: int) -> None:
        """Replace actor ``index`` (dead or hung) with a fresh one from the factory."""
        ray.kill(self.actors[index], no_restart=True)
        self.actors[index] = self.remote_cls.remote(self.factory, index)
        self.num_restarts += 1

    def shutdown(self) -> None:
        # Wait for every live actor's stop (closing its envs) before killing any; a dead
        # actor's call simply comes back as failed and does not cut the others short.
        stops = [a.stop.remote() for a in self.actors]
        ready, _ = ray.wait(stops, num_returns=len(stops), timeout=10)
        for i, stop in enumerate(stops):
            if stop in ready:
                try:
                    self._received(i, ray.get(stop))
                except RayError:
                    pass
        for actor in self.actors:
            ray.kill(actor, no_restart=True)
        self.actors = []


def check_reachable(address: str, timeout_s: float = 10.0) -> None:
    """Fail within ``timeout_s`` when nothing listens at ``host:port`` (``ray.init`` would
    keep retrying for minutes). ``auto`` and ``ray://`` addresses are left to Ray."""
    if address in ("auto", "local") or "://" in address:
        return
    host, sep, port = address.rpartition(":")
    if not sep or not port.isdigit():
        raise ClusterUnreachableError(f"--address {address!r} is not host:port (or 'auto')")
    try:
        socket.create_connection((host or "127.0.0.1", int(port)), timeout=timeout_s).close()
    except OSError as e:
        raise ClusterUnreachableError(f"--address {address!r}: nothing answers there ({e.strerror or e}); "
                                      "is the cluster started (`ray start --head`)?") from None


class RayRuntime(Runtime):
    name = "ray"

    def __init__(
        self,
        *,
        address: str | None = None,
        num_cpus: float | None = None,
        num_gpus: float | None = None,
        include_dashboard: bool = False,
        py_modules: Sequence[Any] = (),
        lean: bool = False,
    ) -> None:
        """``py_modules`` (the user's own modules) are shipped to every worker, so what
        they define unpickles there, whatever the worker's directory or node. ``lean``: an
        embedded instance starts without its API server, autoscaler monitor and log monitor
        (runtime/lean_start.py); its actors' output comes with their replies."""
        self.num_puts = 0
        self.started_ray = False
        if address is None and os.environ.get("RAY_ADDRESS") and not ray.is_initialized():
            # set by `ray job submit` (or by hand): the cluster this driver is meant to use
            address = os.environ["RAY_ADDRESS"]
            print(f"rlfleet: joining the Ray cluster at {address} (RAY_ADDRESS)", file=sys.stderr, flush=True)
        self.address = address
        self.watchdog: subprocess.Popen | None = None
        if not ray.is_initialized():
            if address is not None:
                check_reachable(address)
            # rlfleet itself is installed; a user's own env modules (imported by module path
            # when a worker unpickles a creator) live beside the driver, so workers get its
            # working directory on their path, as a script run from it has.
            path = [p for p in os.environ.get("PYTHONPATH", "").split(os.pathsep) if p]
            pythonpath = os.pathsep.join(path if os.getcwd() in path else [os.getcwd(), *path])
            runtime_env: dict[str, Any] | None = None
            if address is None and not py_modules:
                # An embedded instance's workers inherit this process's environment: no runtime
                # env to set up, which costs each worker about 0.6 s of its start here.
                os.environ["PYTHONPATH"] = pythonpath
            else:
                runtime_env = {"env_vars": {"PYTHONPATH": pythonpath}}
                if py_modules:
                    runtime_env["py_modules"] = list(py_modules)
            # plain `ray` has no dashboard (ray[default] has): Ray would log a page and raise
            dashboard_error = getattr(ray._private.utils, "get_dashboard_dependency_error", lambda: None)
            if include_dashboard and address is None and (missing := dashboard_error()) is not None:
                print(f"rlfleet: ray_dashboard=true, but this Ray has no dashboard ({missing}); Ray starts in full "
                      "without it: pip install 'ray[default]' adds it", file=sys.stderr, flush=True)
                include_dashboard = False
            lean = lean and address is None and not include_dashboard
            kwargs: dict[str, Any] = dict(
                # "local": a new instance even where `ray start` runs a cluster on this machine,
                # which ray.init() would join by itself, and then refuse the CPUs asked for
                address=address or "local",
                include_dashboard=include_dashboard,
                logging_level=logging.WARNING,
                log_to_driver=not lean,  # a lean instance's actors send their output with their replies
                runtime_env=runtime_env,
            )
            if address is None:  # an embedded instance gets exactly what the config asks for
                kwargs.update(num_cpus=int(num_cpus) if num_cpus is not None else None,
                              num_gpus=int(num_gpus) if num_gpus is not None else None)
            with lean_start(lean):
                ray.init(**kwargs)
            self.started_ray = True
            lean_instance[:] = [ray.get_runtime_context().gcs_address] if lean else []
            if address is None:  # an instance of our own: it must not outlive a killed driver
                self.watchdog = subprocess.Popen(
                    [sys.executable, "-m", "rlfleet.runtime.watchdog", str(os.getpid())], start_new_session=True,
                    stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                )

    def create_group(
        self,
        factory: Callable[[int], Any],
        count: int,
        *,
        num_cpus: float = 1.0,
        num_gpus: float = 0.0,
        name: str = "Actor",
    ) -> RayActorGroup:
        # A single machine: what is not free now never will be. Inside a placement group (a
        # Tune trial's) the actors take the group's reserved bundles instead.
        if self.address is None and ray.util.get_current_placement_group() is None:
            self._require_free(count, num_cpus=num_cpus, num_gpus=num_gpus, name=name)
        return RayActorGroup(factory, count, num_cpus=num_cpus, num_gpus=num_gpus, name=name,
                             forward_output=self.forward_output)

    @property
    def forward_output(self) -> bool:
        """Actors send their output with their replies: the instance, this runtime's or
        one it joined in this process, runs without Ray's log monitor."""
        return ray.is_initialized() and lean_instance == [ray.get_runtime_context().gcs_address]

    def _require_free(self, count: int, *, num_cpus: float, num_gpus: float, name: str, wait_s: float = 5.0) -> None:
        """Refuse at once what the embedded instance cannot place (say a second algorithm
        built while the first still holds its actors), instead of waiting forever. Actors
        killed a moment ago free their resources with a delay: wait a little for that."""
        deadline = time.monotonic() + wait_s
        while True:
            free = ray.available_resources()
            short = [(kind, count * each, free.get(kind, 0.0)) for kind, each in (("CPU", num_cpus), ("GPU", num_gpus))
                     if each > 0 and count * each > free.get(kind, 0.0) + 1e-9]
            if not short or time.monotonic() > deadline:
                break
            time.sleep(0.1)
        if short:
            kind, need, have = short[0]
            raise InsufficientResourcesError(
                f"{count} {name} actors ask for {need:g} {kind}s, the Ray instance of this process has {have:g} free; "
                "stop() the algorithm that still holds them, or ask for fewer"
            )

    def map_unordered(self, fn: Callable[[Any], Any], items: Sequence[Any], *, num_cpus: float = 1.0) -> Iterator[tuple[int, Any]]:
        task = ray.remote(num_cpus=num_cpus)(fn)
        pending = {task.remote(item): i for i, item in enumerate(items)}
        while pending:
            ready, _ = ray.wait(list(pending), num_returns=1)
            yield pending.pop(ready[0]), ray.get(ready[0])

    def put(self, obj: Any) -> RayRef:
        self.num_puts += 1
        return RayRef(ray.put(obj))

    def shutdown(self) -> None:
        if self.watchdog is not None:  # a clean shutdown: nothing to watch for
            self.watchdog.kill()
            self.watchdog.wait()
            self.watchdog = None
        if self.started_ray and ray.is_initialized():
            ray.shutdown()
            self.started_ray = False
            lean_instance.clear()


class _NotMainThread(logging.Filter):
    """Drops Ray's warning that ``ray.init`` off the main thread sets no SIGTERM handler:
    :meth:`StartingRayRuntime.result` sets it, on the main thread."""

    def filter(self, record: logging.LogRecord) -> bool:
        return "SIGTERM handler is not set" not in record.getMessage()


class StartingRayRuntime:
    """A :class:`RayRuntime` built on a thread of its own (``prestarted`` in
    runtime/__init__.py); :meth:`result` waits for it.

    The thread stays parked once Ray is up: Ray ties the processes it spawns to their
    parent's death signal, which Linux sends when the spawning *thread* ends, so a thread
    that returned would take the instance with it."""

    def __init__(self, options: dict[str, Any]) -> None:
        self.options = options
        self.runtime: RayRuntime | None = None
        self.error: BaseException | None = None
        self.ready = threading.Event()
        threading.Thread(target=self._start, name="rlfleet-ray-start", daemon=True).start()

    def _start(self) -> None:
        quiet = _NotMainThread()
        worker_log = logging.getLogger("ray._private.worker")
        worker_log.addFilter(quiet)
        try:
            self.runtime = RayRuntime(**self.options)
        except BaseException as e:  # raised again by result(), on the caller's thread
            self.error = e
        finally:
            worker_log.removeFilter(quiet)
            self.ready.set()
        if self.runtime is not None and self.runtime.started_ray:
            threading.Event().wait()  # parked for the process's life (see the class docstring)

    def result(self) -> RayRuntime:
        self.ready.wait()
        if self.error is not None:
            raise self.error
        assert self.runtime is not None
        if (self.runtime.started_ray and threading.current_thread() is threading.main_thread()
                and signal.getsignal(signal.SIGTERM) is signal.SIG_DFL):
            # What ray.init sets on the main thread: SIGTERM exits through atexit and
            # finally blocks, which shut the instance down.
            signal.signal(signal.SIGTERM, lambda signum, frame: sys.exit(signum))
        return self.runtime

    def discard(self) -> None:
        """Wait for the start and shut down what it started."""
        self.ready.wait()
        if self.runtime is not None:
            self.runtime.shutdown()

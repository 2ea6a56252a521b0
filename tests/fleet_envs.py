"""Envs and actors for the fleet tests, in a module Ray workers can import; and the
test-side helpers both fleet test modules share.

Ray unpickles a factory or an env class in the worker process by its module path, so they
cannot live in a test file (pytest imports those under their bare file name); every Ray
instance in the tests puts the repository root on the workers' ``PYTHONPATH``, which makes
``tests.fleet_envs`` importable there.
"""

from __future__ import annotations

import contextlib
import logging
import os
import subprocess
import sys
import threading
import time
from typing import Any, Callable, Iterator, NamedTuple

import numpy as np

from rlfleet.envs.testing import CorridorEnv


class HangingEnv(CorridorEnv):
    """A corridor whose ``step`` blocks forever once it has answered ``hang_after`` calls
    (counted per instance, so every fresh runner hangs again): a simulator that deadlocks."""

    def __init__(self, hang_after: int = 0) -> None:
        super().__init__(length=5, max_steps=30)
        self.hang_after, self.calls = hang_after, 0

    def step(self, action: int) -> tuple[np.ndarray, float, bool, bool, dict]:
        self.calls += 1
        if self.calls > self.hang_after:
            threading.Event().wait()  # never set: only killing the process ends this
        return super().step(action)


class ImportsInRunnersEnv(CorridorEnv):
    """A corridor that builds in the driver (the spaces probe) but, in any other process,
    imports a module that is not there: a user's env whose module the runners lack."""

    def __init__(self, driver_pid: int) -> None:
        if os.getpid() != driver_pid:
            import no_such_module_of_the_user  # noqa: F401 (raises: the point)
        super().__init__(length=5, max_steps=30)


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


class Printer:
    """An actor that writes to stdout and stderr: from Python, straight to the file
    descriptors as C code would, from a thread after the call, and from a child process."""

    def __init__(self, index: int, fail: bool = False) -> None:
        print(f"printer {index} built")
        if fail:
            raise RuntimeError("printer could not be built")

    def speak(self, words: str) -> int:
        print(words)
        os.write(2, f"fd2: {words}\n".encode())
        return len(words)

    def shout(self, lines: int) -> int:
        for i in range(lines):
            sys.stdout.write(f"line {i:06d} " + "x" * 87 + "\n")  # 100 bytes a line
        return lines

    def later(self, words: str) -> None:
        threading.Timer(0.2, lambda: print(words, flush=True)).start()

    def child(self, words: str) -> int:
        return subprocess.run([sys.executable, "-c", f"print({words!r})"]).returncode

    def half_line(self, words: str) -> None:
        sys.stdout.write(words)  # no newline yet

    def fail(self) -> None:
        print("about to fail")
        raise ValueError("printer failed")

    def crash(self) -> None:
        print("about to crash", flush=True)
        import ctypes

        ctypes.string_at(0)  # a segfault: Ray's faulthandler writes a traceback to stderr


class FailingPrinterFactory:
    def __call__(self, index: int) -> Printer:
        return Printer(index, fail=True)


class Probe:
    """A stand-in actor: reports its index and what it was handed, fails on request, and
    leaves a file behind when stopped."""

    def __init__(self, index: int) -> None:
        self.index = index
        self.stopped_file: str | None = None
        self.stop_delay_s = 0.0

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

    def mark_stopped_in(self, path: str, delay_s: float = 0.0) -> None:
        """Make ``stop()`` take ``delay_s``, then write ``<path>.<index>``."""
        self.stopped_file, self.stop_delay_s = path, delay_s

    def stop(self) -> None:
        if self.stopped_file is not None:
            threading.Event().wait(self.stop_delay_s)  # a close() that takes a moment
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


class WeightsProbe:
    """Stands in for an EnvRunner in an EnvRunnerGroup: remembers how ``set_weights``
    received its weights (the type of each value, whether it is writeable, its sum)."""

    def __init__(self, index: int) -> None:
        self.index = index
        self.received: list[tuple[dict[str, tuple[str, bool, float]], int]] = []

    def set_weights(self, weights: dict[str, np.ndarray], version: int, connector_state: Any = None) -> None:
        arrays = {k: (type(v).__name__, bool(v.flags.writeable), float(np.sum(v))) for k, v in weights.items()}
        self.received.append((arrays, version))

    def history(self) -> list[tuple[dict[str, tuple[str, bool, float]], int]]:
        return self.received


# -------------------------------------------------------------------------------------
# Test-side helpers (never run in workers): processes as `ps` sees them, a shared Ray
# instance, and a spy on what actor handles are sent.

WORKER_PATH = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


class Proc(NamedTuple):
    pid: int
    ppid: int
    sid: int
    stat: str
    args: str

    @property
    def alive(self) -> bool:
        return not self.stat.startswith("Z")  # a zombie has exited; only its entry is left


def processes() -> list[Proc]:
    out = subprocess.run(["ps", "-ww", "-eo", "pid=,ppid=,sid=,stat=,args="], capture_output=True, text=True,
                         check=True).stdout
    procs = []
    for line in out.splitlines():
        parts = line.split(None, 4)
        if len(parts) >= 4:
            procs.append(Proc(int(parts[0]), int(parts[1]), int(parts[2]), parts[3], parts[4] if len(parts) > 4 else ""))
    return procs


def descendants(pid: int) -> list[Proc]:
    """Every live process whose parent chain leads to ``pid`` (not ``pid`` itself)."""
    procs = processes()
    children: dict[int, list[Proc]] = {}
    for p in procs:
        children.setdefault(p.ppid, []).append(p)
    out, todo = [], [pid]
    while todo:
        for child in children.get(todo.pop(), []):
            out.append(child)
            todo.append(child.pid)
    return [p for p in out if p.alive]


def in_session(sid: int, *, exclude: tuple[int, ...] = ()) -> list[Proc]:
    """Live processes of session ``sid`` (a subprocess started with start_new_session=True
    leads its own session; every process it starts stays in it unless it calls setsid)."""
    return [p for p in processes() if p.sid == sid and p.alive and p.pid not in exclude]


def wait_until_gone(pids: list[int], timeout_s: float) -> list[Proc]:
    """Poll until none of ``pids`` is alive or ``timeout_s`` passed; return those left."""
    deadline = time.monotonic() + timeout_s
    while True:
        left = [p for p in processes() if p.pid in set(pids) and p.alive]
        if not left or time.monotonic() > deadline:
            return left
        time.sleep(0.2)


def wait_until(predicate: Callable[[], Any], timeout_s: float) -> Any:
    deadline = time.monotonic() + timeout_s
    while True:
        value = predicate()
        if value or time.monotonic() > deadline:
            return value
        time.sleep(0.1)


def describe(procs: list[Proc]) -> str:
    return "\n".join(f"  {p.pid} {p.stat} {p.args[:120]}" for p in procs)


def start_shared_ray() -> None:
    """One Ray instance for a test module; workers can import ``tests.fleet_envs``."""
    import ray

    assert not ray.is_initialized(), "another test left Ray running"
    ray.init(num_cpus=4, include_dashboard=False, logging_level=logging.WARNING,
             runtime_env={"env_vars": {"PYTHONPATH": WORKER_PATH}})


def stop_shared_ray() -> None:
    """Shut the instance down and check that no process it started is left behind."""
    import ray

    started = [p.pid for p in descendants(os.getpid())]
    ray.shutdown()
    left = wait_until_gone(started, timeout_s=30)
    assert not left, f"processes left after ray.shutdown():\n{describe(left)}"


class _MethodSpy:
    def __init__(self, method: Any, index: int, log: list) -> None:
        self.method, self.index, self.log = method, index, log

    def remote(self, *args: Any, **kwargs: Any) -> Any:
        self.log.append((self.index, args))
        return self.method.remote(*args, **kwargs)


class _HandleSpy:
    """An actor handle whose ``call.remote(...)`` arguments are recorded."""

    def __init__(self, handle: Any, index: int, log: list) -> None:
        self.handle, self.index, self.log = handle, index, log

    @property
    def call(self) -> _MethodSpy:
        return _MethodSpy(self.handle.call, self.index, self.log)

    def __getattr__(self, name: str) -> Any:
        return getattr(self.handle, name)


@contextlib.contextmanager
def remote_calls_of(group: Any) -> Iterator[list[tuple[int, tuple]]]:
    """Record ``(actor index, args)`` of every ``call.remote`` a RayActorGroup sends
    while inside the block (the real handles are put back afterwards)."""
    log: list[tuple[int, tuple]] = []
    real = list(group.actors)
    group.actors = [_HandleSpy(h, i, log) for i, h in enumerate(real)]
    try:
        yield log
    finally:
        group.actors = real


class StallingGeneratorFactory:
    """A generator runner factory whose runners hang for 20 s when weights version 3
    arrives (a stuck broadcast)."""

    def __init__(self, config, **kw):
        from rlfleet.rl.lm.generator import GeneratorRunnerFactory

        self.inner = GeneratorRunnerFactory(config, **kw)
        self.module_spec, self.config = self.inner.module_spec, self.inner.config
        self.family, self.defaults, self.text_env = self.inner.family, self.inner.defaults, self.inner.text_env

    def __call__(self, index):
        import time

        runner = self.inner(index)
        take = runner.set_weights

        def set_weights(weights, version, connector_state=None):
            if version >= 3:
                time.sleep(20)
            take(weights, version, connector_state)

        runner.set_weights = set_weights
        return runner

    def evaluation_runner(self, num_episodes):
        return self.inner.evaluation_runner(num_episodes)

    def make_connector(self):
        return self.inner.make_connector()


# -- callbacks (tests/rl/test_callbacks.py), importable by name in Ray workers -----------
from rlfleet.rl.callbacks import Callbacks  # noqa: E402


class Recorder(Callbacks):
    """Records the driver-side hooks it sees, and adds a key to each progress row."""

    calls: list = []

    def on_train_result(self, *, algorithm: Any, result: dict) -> None:
        result["custom_key"] = result["iteration"] * 10
        Recorder.calls.append(("result", result["iteration"]))

    def on_checkpoint(self, *, algorithm: Any, path: str) -> None:
        Recorder.calls.append(("checkpoint", os.path.basename(path)))

    def on_run_end(self, *, algorithm: Any, result: dict) -> None:
        Recorder.calls.append(("end", result.get("iteration")))


class EpisodeCounter(Callbacks):
    """Counts the episodes its runner ends, one line each in a file of its own per runner
    process, in the directory named by $RLFLEET_TEST_COUNT_DIR."""

    def on_episode_end(self, *, episode: Any) -> None:
        path = os.path.join(os.environ["RLFLEET_TEST_COUNT_DIR"], f"runner-{episode.runner_index}-{os.getpid()}")
        with open(path, "a", encoding="utf-8") as f:
            f.write(f"{episode.length}\n")

"""The fleet of env runners, seen through the runtime (in-process or Ray actors).

Fault tolerance lives here: a runner that dies or does not answer within the timeout is
replaced from its factory, gets the current weights and connector state, and its request
is dropped; the iteration goes on with the runners that answered.
"""

from __future__ import annotations

import sys
import time
from typing import Any

from rlfleet.rl.core import Fragment, RunnerFactory
from rlfleet.runtime import ActorInitError, CallResult, Future, ObjectRef, Runtime


class RunnerFailureError(RuntimeError):
    """Env runners kept failing; the run stops (after a final checkpoint)."""


class WeightSyncTimeoutError(RunnerFailureError):
    """A runner did not take a weight broadcast within ``weight_sync_timeout_s``."""


class EnvRunnerGroup:
    def __init__(
        self,
        runtime: Runtime,
        factory: RunnerFactory,
        count: int,
        *,
        num_cpus_per_runner: float = 1.0,
        sample_timeout_s: float | None = None,
        max_consecutive_failures: int = 3,
        restart_timeout_s: float | None = None,
        weight_sync_timeout_s: float | None = None,
        requests_per_runner: int = 1,
    ) -> None:
        self.runtime = runtime
        self.group = runtime.create_group(factory, count, num_cpus=num_cpus_per_runner, name="EnvRunner")
        self.sample_timeout_s = sample_timeout_s
        self.restart_timeout_s = restart_timeout_s
        self.weight_sync_timeout_s = weight_sync_timeout_s
        self.requests_per_runner = requests_per_runner
        self.last_sync_s = 0.0  # how long the last broadcast took to reach every runner
        self.max_consecutive_failures = max_consecutive_failures
        self.lost: set[int] = set()  # runners whose restart could not be placed: given up
        self.consecutive_failures = 0
        self.num_restarts = 0
        self.num_dropped_requests = 0
        self.weights: tuple[ObjectRef, int] | None = None
        self.connector_state: ObjectRef | None = None
        self.runner_versions = [0] * self.group.size  # weight version each runner holds
        self.in_flight: dict[Future, int] = {}  # asynchronous sample requests -> runner

    @property
    def active(self) -> list[int]:
        """Indices of the runners still in the fleet."""
        return [i for i in range(self.group.size) if i not in self.lost]

    @property
    def size(self) -> int:
        return len(self.active)

    @property
    def num_lost(self) -> int:
        return len(self.lost)

    def sample(self) -> list[Fragment]:
        """One fragment from every runner that answers in time; the rest are restarted."""
        results = self.group.call("sample", indices=self.active, timeout_s=self.sample_timeout_s)
        self._handle_failures([r for r in results if not r.ok])
        return [r.value for r in results if r.ok]

    # -- asynchronous sampling: requests in flight on every runner at all times ------------
    def sample_async(self) -> list[Fragment]:
        """The fragments that have arrived (waiting for at least one); every runner that
        answered gets the newest published weights if it is behind, and a new request.
        Each runner holds ``requests_per_runner`` requests: with 2, it starts its next
        fragment at once instead of waiting for the driver to finish learning."""
        if not self.in_flight:
            for i in self.active:
                for _ in range(self.requests_per_runner):
                    self._submit(i)
        done, pending = self.group.wait(list(self.in_flight), timeout_s=self.sample_timeout_s)
        fragments, failed = [], []
        for future, result in done:
            index = self.in_flight.pop(future)
            if result.ok:
                fragments.append(result.value)
                self._submit(index)
            else:
                failed.append(result)
        now = time.monotonic()
        for future in pending:  # a request older than the timeout: the runner hangs
            if self.sample_timeout_s is not None and now - future.submitted_at > self.sample_timeout_s:
                index = self.in_flight.pop(future)
                failed.append(CallResult(index, error=TimeoutError(f"actor {index} did not answer within {self.sample_timeout_s} s")))
        failed = list({r.index: r for r in failed}.values())  # one restart per runner
        for r in failed:  # its other requests went to the actor being replaced
            for future in [f for f, i in self.in_flight.items() if i == r.index]:
                del self.in_flight[future]
        self._handle_failures(failed)
        for r in failed:
            if r.index not in self.lost:
                for _ in range(self.requests_per_runner):
                    self._submit(r.index)
        return fragments

    def publish_weights(self, weights: dict[str, Any], version: int, connector_state: Any = None) -> None:
        """Put new weights (and the driver's connector state, when there is one) into the
        object store once; runners pick them up as they return, so no runner ever waits
        for a broadcast."""
        started = time.perf_counter()
        self.weights = (self.runtime.put(weights), version)
        if connector_state is not None:
            self.connector_state = self.runtime.put(connector_state)
        self.last_sync_s = time.perf_counter() - started  # the put; runners read it as they return

    def _submit(self, index: int) -> None:
        if self.weights is not None and self.runner_versions[index] < self.weights[1]:
            # Runs before the sample below; the connector state published with those weights rides along.
            self.group.submit(index, "set_weights", *self.weights, self.connector_state)
            self.runner_versions[index] = self.weights[1]
        self.in_flight[self.group.submit(index, "sample")] = index

    def _handle_failures(self, failed: list[CallResult]) -> None:
        for r in failed:
            reason = (str(r.error).splitlines() or [""])[0][:200]
            print(f"env runner {r.index} failed ({type(r.error).__name__}: {reason}); restarting it",
                  file=sys.stderr, flush=True)
            self.restart(r.index)
        self.num_dropped_requests += len(failed)
        self.consecutive_failures = self.consecutive_failures + 1 if failed else 0
        if self.consecutive_failures >= self.max_consecutive_failures:
            last = failed[-1].error
            raise RunnerFailureError(
                f"env runners failed in {self.consecutive_failures} consecutive iterations; "
                f"last error: {type(last).__name__}: {last}"
            )

    def restart(self, index: int) -> None:
        """A fresh runner from the factory, with the current weights and connector state.
        One that cannot be placed and answer within ``restart_timeout_s`` (its node is gone
        and the others are full) is given up: the fleet goes on with fewer runners, and
        with none left the run stops, instead of waiting forever."""
        self.group.restart(index)
        self.num_restarts += 1
        method, args = ("set_weights", (*self.weights, self.connector_state)) if self.weights else ("ping", ())
        result = self.group.call(method, *args, indices=[index], timeout_s=self.restart_timeout_s)[0]
        if isinstance(result.error, ActorInitError):  # every restart from this factory would raise it again
            raised = str(result.error).splitlines()[0]
            hint = " (a module of yours? give it with --import)" if "No module named" in raised else ""
            raise RunnerFailureError(f"env runner {index} cannot start: {raised}{hint}")
        if not result.ok:
            self.lose(index, result.error)
            return
        if self.weights is not None:
            self.runner_versions[index] = self.weights[1]

    def lose(self, index: int, error: BaseException | None) -> None:
        self.group.kill(index)
        self.lost.add(index)
        reason = (str(error).splitlines() or [""])[0][:200]
        if not self.active:
            raise RunnerFailureError(f"all {self.group.size} env runners are lost; the last could not be restarted "
                                     f"within {self.restart_timeout_s} s ({type(error).__name__}: {reason})")
        print(f"env runner {index} could not be restarted within {self.restart_timeout_s} s "
              f"({type(error).__name__}: {reason}); going on with {self.size} runners", file=sys.stderr, flush=True)

    def sync_weights(self, weights: dict[str, Any], version: int, connector_state: Any = None) -> None:
        """Put the weights (and the driver's connector state, when there is one) into the
        object store once; every runner receives the same references in one call and reads
        the stored copy (never a copy pickled per runner)."""
        started = time.perf_counter()
        self.weights = (self.runtime.put(weights), version)
        if connector_state is not None:
            self.connector_state = self.runtime.put(connector_state)
        deadline = self.weight_sync_timeout_s
        starting = deadline is not None and any(self.runner_versions[i] == 0 for i in self.active)
        if starting:  # a runner's first weights wait for it to start (a process, imports, a model)
            deadline = max(deadline, self.restart_timeout_s or 0.0)
        results = self.group.call("set_weights", *self.weights, self.connector_state, indices=self.active,
                                  timeout_s=deadline if deadline is not None else self.sample_timeout_s)
        self.last_sync_s = time.perf_counter() - started
        late = [r.index for r in results if isinstance(r.error, TimeoutError)]
        if deadline is not None and late:
            raise WeightSyncTimeoutError(
                f"weight sync: env runner {late[0]} did not take weights version {version} within "
                + (f"{deadline:g} s of starting (restart_timeout_s)" if starting
                   else f"weight_sync_timeout_s={deadline:g} s")
                + (f" ({len(late)} runners late)" if len(late) > 1 else ""))
        # Without a deadline, a runner that does not take them in time fails its next
        # sample and is restarted.
        self.runner_versions = [version] * self.group.size

    def stop(self) -> None:
        self.group.shutdown()

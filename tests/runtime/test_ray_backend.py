"""The Ray backend: real actor processes, the object store, timeouts, restarts, shutdown.

One Ray instance serves the whole module (starting one costs ~5 s); the runtime under
test joins it, as it joins any running instance, and so never shuts it down. The
instance's own shutdown is checked to leave no process behind.
"""

import os
import signal

import numpy as np
import pytest
import ray

from rlfleet.runtime import ObjectRef, make_runtime
from rlfleet.runtime.ray_backend import RayRef, RayRuntime
from tests.fleet_envs import (
    Probe,
    SlowProbeFactory,
    processes,
    remote_calls_of,
    start_shared_ray,
    stop_shared_ray,
    wait_until_gone,
)


@pytest.fixture(scope="module")
def runtime():
    start_shared_ray()
    rt = make_runtime("ray")
    yield rt
    rt.shutdown()
    stop_shared_ray()


@pytest.fixture(scope="module")
def probes(runtime):
    """Three Probe actors for the tests that neither kill nor restart one."""
    group = runtime.create_group(Probe, 3, num_cpus=0.25, name="Probe")
    yield group
    group.shutdown()


def args_of(pid: int) -> str:
    return next((p.args for p in processes() if p.pid == pid), "")


def test_a_runtime_that_joins_a_running_instance_leaves_it_running(runtime):
    assert isinstance(runtime, RayRuntime)
    assert runtime.started_ray is False
    other = RayRuntime()
    assert other.started_ray is False
    other.shutdown()
    assert ray.is_initialized()  # shutting down a runtime that did not start Ray is a no-op
    assert ray.get(ray.put(7)) == 7


def test_call_reaches_every_actor_with_its_index(probes):
    assert probes.size == 3
    results = probes.call("add", 2, 5)
    assert [(r.index, r.value, r.ok) for r in results] == [(0, 7, True), (1, 107, True), (2, 207, True)]


def test_call_on_chosen_indices_answers_in_the_order_asked(probes):
    results = probes.call("whoami", indices=[2, 0])
    assert [(r.index, r.value) for r in results] == [(2, 2), (0, 0)]
    assert probes.call("whoami", indices=[]) == []


def test_call_each_gives_actor_i_its_own_arguments(probes):
    results = probes.call_each("add", [(1, 2), (3, 4), (5, 6)])
    assert [(r.index, r.value) for r in results] == [(0, 3), (1, 107), (2, 211)]


def test_an_actor_error_comes_back_as_a_result_with_its_cause(probes):
    results = probes.call("fail", "boom", indices=[1])
    assert len(results) == 1 and not results[0].ok
    assert isinstance(results[0].error, ValueError)  # the cause's type, not only RayTaskError
    assert "actor 1: boom" in str(results[0].error)
    assert probes.call("whoami", indices=[1])[0].value == 1  # the actor survives its error


def test_put_stores_once_and_every_actor_reads_the_stored_arrays(runtime, probes):
    weights = {"w": np.arange(12, dtype=np.float32).reshape(3, 4), "b": np.ones(4, np.float32)}
    puts_before = runtime.num_puts
    ref = runtime.put(weights)
    assert isinstance(ref, ObjectRef) and isinstance(ref, RayRef)
    assert runtime.num_puts == puts_before + 1
    with remote_calls_of(probes) as sent:
        results = probes.call("describe", ref)
    # What travels to each actor is the reference, the same one for all of them.
    assert [i for i, _ in sent] == [0, 1, 2]
    for _, args in sent:
        assert args[0] == "describe"
        assert isinstance(args[1], ray.ObjectRef) and args[1] == ref.ref
        assert not any(isinstance(a, (dict, np.ndarray)) for a in args)
    # What each actor sees is the object itself: numpy arrays that are read-only because
    # they are views of the shared store's buffer, not private copies.
    for r in results:
        assert r.value == {
            "type": "dict",
            "arrays": {"w": ("ndarray", False, 66.0), "b": ("ndarray", False, 4.0)},
        }


def test_plain_arguments_are_sent_by_value(probes):
    with remote_calls_of(probes) as sent:
        results = probes.call("describe", [1, 2], indices=[0])
    assert sent == [(0, ("describe", [1, 2]))]
    assert results[0].value == {"type": "list"}


def test_actor_processes_are_titled_with_the_group_name(runtime):
    group = runtime.create_group(Probe, 2, num_cpus=0.25, name="EnvRunner")
    try:
        pids = group.pids()
        assert len(set(pids)) == 2 and os.getpid() not in pids
        for pid in pids:
            assert args_of(pid).startswith("ray::EnvRunner"), args_of(pid)
    finally:
        group.shutdown()


def test_an_actor_that_does_not_answer_in_time_is_reported_and_can_be_restarted(runtime):
    group = runtime.create_group(SlowProbeFactory(slow=(1,)), 2, num_cpus=0.25, name="Probe")
    try:
        old_pids = group.pids()
        results = group.call("whoami", timeout_s=1.0)
        assert (results[0].index, results[0].value, results[0].ok) == (0, 0, True)
        assert results[1].index == 1 and isinstance(results[1].error, TimeoutError)
        assert str(results[1].error) == "actor 1 did not answer within 1.0 s"

        group.restart(1)  # kills the stalled process and builds a fresh actor 1
        assert group.num_restarts == 1
        assert not wait_until_gone([old_pids[1]], timeout_s=20), "the stalled actor's process is still running"
        new_pids = group.pids()
        assert new_pids[0] == old_pids[0] and new_pids[1] != old_pids[1]
        assert [r.value for r in group.call("add", 1, 1)] == [2, 102]
    finally:
        group.shutdown()


def test_a_killed_actor_reports_an_error_and_restart_replaces_it(runtime):
    group = runtime.create_group(Probe, 2, num_cpus=0.25, name="Probe")
    try:
        old_pids = group.pids()
        os.kill(old_pids[0], signal.SIGKILL)
        results = group.call("whoami", timeout_s=30)
        assert not results[0].ok and isinstance(results[0].error, ray.exceptions.RayActorError), results[0]
        assert (results[1].value, results[1].ok) == (1, True)

        group.restart(0)
        assert [r.value for r in group.call("whoami", timeout_s=30)] == [0, 1]
        assert group.pids()[0] not in old_pids
    finally:
        group.shutdown()


def test_shutdown_stops_every_actor_then_ends_its_process(runtime, tmp_path):
    group = runtime.create_group(Probe, 3, num_cpus=0.25, name="Probe")
    group.call("mark_stopped_in", str(tmp_path / "stopped"), 0.0)
    pids = group.pids()
    group.shutdown()
    assert group.size == 0
    assert sorted(os.listdir(tmp_path)) == ["stopped.0", "stopped.1", "stopped.2"]
    assert not wait_until_gone(pids, timeout_s=20)


def test_a_dead_actor_does_not_cut_short_the_others_stop(runtime, tmp_path):
    # stop() is where a runner closes its envs (an async vector env's subprocesses, an
    # external simulator): the live actors must get to finish it before being killed.
    group = runtime.create_group(Probe, 3, num_cpus=0.25, name="Probe")
    group.call("mark_stopped_in", str(tmp_path / "stopped"), 1.0)
    pids = group.pids()
    os.kill(pids[2], signal.SIGKILL)
    assert not group.call("whoami", indices=[2], timeout_s=30)[0].ok  # Ray knows it is dead
    group.shutdown()
    assert group.size == 0
    assert sorted(os.listdir(tmp_path)) == ["stopped.0", "stopped.1"]
    assert not wait_until_gone(pids, timeout_s=20)

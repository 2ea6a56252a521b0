"""A Ray runtime started ahead (``prestarted``): taken by ``make_runtime``, alive after
its start thread is done, and shut down when nobody took it."""

import os
import time

import pytest
import ray

from rlfleet.runtime import make_runtime, prestarted
from tests.fleet_envs import Printer, Probe, descendants, describe, wait_until


def ray_children():
    return [p for p in descendants(os.getpid()) if p.alive and ("ray" in p.args or "raylet" in p.args)]


@pytest.fixture(autouse=True)
def no_ray_before_or_after():
    assert not ray.is_initialized()
    yield
    if ray.is_initialized():  # a failed test must not leave its instance to the next
        ray.shutdown()
    left = wait_until(lambda: not ray_children(), 30) or ray_children()
    assert left is True or not left, f"left behind:\n{describe(left)}"


def test_make_runtime_takes_the_prestarted_runtime_and_its_processes_outlive_the_start():
    with prestarted("ray", num_cpus=1, num_gpus=0):
        runtime = make_runtime("ray", num_cpus=1, num_gpus=0)
    try:
        assert runtime.started_ray and ray.is_initialized()
        assert ray.cluster_resources().get("CPU") == 1.0  # the options it was started with
        time.sleep(1.0)  # the start thread finished long ago: its children must live on
        group = runtime.create_group(Probe, 1, num_cpus=0.5, name="Probe")
        assert [r.value for r in group.call("whoami")] == [0]
        group.shutdown()
    finally:
        runtime.shutdown()
    assert not ray.is_initialized()


def test_a_block_that_fails_before_taking_the_runtime_shuts_it_down():
    with pytest.raises(KeyError, match="before the runtime"):
        with prestarted("ray", num_cpus=1, num_gpus=0):
            raise KeyError("before the runtime")
    assert not ray.is_initialized()


def test_a_runtime_asked_with_other_options_is_started_again_with_them():
    with prestarted("ray", num_cpus=1, num_gpus=0):
        runtime = make_runtime("ray", num_cpus=2, num_gpus=0)
    try:
        assert runtime.started_ray and ray.cluster_resources().get("CPU") == 2.0
    finally:
        runtime.shutdown()


def test_a_config_error_found_while_ray_starts_leaves_no_instance():
    from rlfleet.algorithms.ppo import PPOConfig
    from rlfleet.envs import EnvNotFoundError

    with pytest.raises(EnvNotFoundError, match="CartPole-v0|CartPol"):
        PPOConfig(env="CartPol-v1", num_env_runners=1).build()
    assert not ray.is_initialized()


HEAD_SERVICES = {"API server": "ray/dashboard/dashboard.py", "autoscaler monitor": "ray/autoscaler/_private/monitor.py",
                 "log monitor": "ray/_private/log_monitor.py"}


def head_services() -> set[str]:
    args = [p.args for p in descendants(os.getpid()) if p.alive]
    return {name for name, marker in HEAD_SERVICES.items() if any(marker in a for a in args)}


@pytest.mark.parametrize("lean", [True, False])
def test_a_lean_instance_starts_without_the_api_server_and_monitors_and_runs_actors(lean):
    from ray._private.node import Node

    methods = (Node.start_api_server, Node.start_monitor, Node.start_log_monitor)
    runtime = make_runtime("ray", num_cpus=1, num_gpus=0, lean=lean)
    try:
        assert head_services() == (set() if lean else set(HEAD_SERVICES))
        group = runtime.create_group(Probe, 1, num_cpus=0.5, name="Probe")
        assert [r.value for r in group.call("whoami")] == [0]
        group.shutdown()
    finally:
        runtime.shutdown()
    assert (Node.start_api_server, Node.start_monitor, Node.start_log_monitor) == methods  # restored


def test_a_training_config_asks_for_a_lean_instance_unless_the_dashboard_is_wanted():
    from rlfleet.algorithms.ppo import PPOConfig

    assert PPOConfig(num_env_runners=2).runtime_request() == (
        "ray", {"address": None, "num_cpus": 2, "num_gpus": 0, "py_modules": [], "include_dashboard": False, "lean": True})
    kind, options = PPOConfig(num_env_runners=2, ray_dashboard=True).runtime_request()
    assert (options["include_dashboard"], options["lean"]) == (True, False)
    assert PPOConfig().runtime_request() == ("local", {})


@pytest.fixture
def lean_runtime():
    runtime = make_runtime("ray", num_cpus=1, num_gpus=0, lean=True)
    yield runtime
    runtime.shutdown()


def test_a_lean_instances_actors_send_their_output_with_their_replies(lean_runtime, capfd):
    group = lean_runtime.create_group(Printer, 1, num_cpus=0.5, name="Printer")
    pid = group.pids()[0]
    [result] = group.call("speak", "hello driver")
    assert result.value == len("hello driver")
    out, err = capfd.readouterr()
    # what the constructor printed comes with the first reply; C-level writes to fd 2 too
    assert out == f"(Printer 0 pid={pid}) printer 0 built\n(Printer 0 pid={pid}) hello driver\n"
    assert err == f"(Printer 0 pid={pid}) fd2: hello driver\n"
    [result] = group.call("speak", "again")
    assert capfd.readouterr().out == f"(Printer 0 pid={pid}) again\n"  # only what is new
    # Ray's own log files still get everything
    logs = ray._private.worker._global_node.get_logs_dir_path()
    [worker_out] = [f for f in os.listdir(logs) if f.startswith("worker-") and f.endswith(f"-{pid}.out")]
    text = open(os.path.join(logs, worker_out)).read()
    assert "printer 0 built" in text and "hello driver" in text and "again" in text
    group.shutdown()


def test_output_beyond_the_limit_is_cut_and_counted_and_an_error_carries_its_output(lean_runtime, capfd):
    from rlfleet.runtime.actor_output import LIMIT_BYTES

    group = lean_runtime.create_group(Printer, 1, num_cpus=0.5, name="Printer")
    group.call("speak", "warm")
    capfd.readouterr()
    [result] = group.call("shout", 3 * LIMIT_BYTES)  # more than a pipe holds: the writer must not block
    assert result.value == 3 * LIMIT_BYTES
    out, err = capfd.readouterr()
    assert out.count("x") == LIMIT_BYTES
    assert f"... {3 * LIMIT_BYTES + 1 - LIMIT_BYTES} more bytes of output are only in its Ray log file" in err
    [result] = group.call("fail")
    assert isinstance(result.error, ValueError) and "printer failed" in str(result.error)
    assert "about to fail" in "".join(getattr(result.error, "__notes__", [])) + str(result.error)
    group.shutdown()


def test_a_full_instance_leaves_actor_output_to_rays_log_monitor(capfd):
    runtime = make_runtime("ray", num_cpus=1, num_gpus=0, lean=False)
    try:
        group = runtime.create_group(Printer, 1, num_cpus=0.5, name="Printer")
        [result] = group.call("speak", "via the log monitor")
        assert result.value == len("via the log monitor") and not isinstance(result.value, tuple)
        assert wait_until(lambda: "via the log monitor" in capfd.readouterr().out, 15)  # Ray's own line
        group.shutdown()
    finally:
        runtime.shutdown()

"""A Ray runtime started ahead (``prestarted``): taken by ``make_runtime``, alive after
its start thread is done, and shut down when nobody took it."""

import os
import time

import pytest
import ray

from rlfleet.runtime import make_runtime, prestarted
from tests.fleet_envs import Probe, descendants, describe, wait_until


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


HEAD_SERVICES = {"API server": "ray/dashboard/dashboard.py", "autoscaler monitor": "ray/autoscaler/_private/monitor.py"}


def head_services() -> set[str]:
    args = [p.args for p in descendants(os.getpid()) if p.alive]
    return {name for name, marker in HEAD_SERVICES.items() if any(marker in a for a in args)}


@pytest.mark.parametrize("lean", [True, False])
def test_a_lean_instance_starts_without_the_api_server_and_monitor_and_runs_actors(lean):
    from ray._private.node import Node

    methods = (Node.start_api_server, Node.start_monitor)
    runtime = make_runtime("ray", num_cpus=1, num_gpus=0, lean=lean)
    try:
        assert head_services() == (set() if lean else set(HEAD_SERVICES))
        assert any("ray/_private/log_monitor.py" in p.args for p in descendants(os.getpid()))  # kept: actor output
        group = runtime.create_group(Probe, 1, num_cpus=0.5, name="Probe")
        assert [r.value for r in group.call("whoami")] == [0]
        group.shutdown()
    finally:
        runtime.shutdown()
    assert (Node.start_api_server, Node.start_monitor) == methods  # restored after the start


def test_a_training_config_asks_for_a_lean_instance_unless_the_dashboard_is_wanted():
    from rlfleet.algorithms.ppo import PPOConfig

    assert PPOConfig(num_env_runners=2).runtime_request() == (
        "ray", {"address": None, "num_cpus": 2, "num_gpus": 0, "py_modules": [], "include_dashboard": False, "lean": True})
    kind, options = PPOConfig(num_env_runners=2, ray_dashboard=True).runtime_request()
    assert (options["include_dashboard"], options["lean"]) == (True, False)
    assert PPOConfig().runtime_request() == ("local", {})

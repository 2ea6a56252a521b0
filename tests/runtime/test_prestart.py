"""A Ray runtime started ahead (``prestarted``): taken by ``make_runtime``, alive after
its start thread is done, and shut down when nobody took it."""

import os
import time

import pytest
import ray

from rlfleet.runtime import make_runtime, prestarted
from tests.fleet_envs import FailingPrinterFactory, Printer, Probe, descendants, describe, wait_until


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
    from ray._private.utils import get_dashboard_dependency_error

    methods = (Node.start_api_server, Node.start_monitor, Node.start_log_monitor)
    runtime = make_runtime("ray", num_cpus=1, num_gpus=0, lean=lean)
    try:
        assert head_services() == (set() if lean else set(HEAD_SERVICES))
        agents = [p.args for p in descendants(os.getpid()) if "dashboard/agent.py" in p.args]
        # lean: minimal, whatever is installed; full: as Ray decides, minimal for want of
        # the dashboard's packages (plain `ray`, not `ray[default]`)
        assert len(agents) == 1 and ("--minimal" in agents[0]) == (lean or get_dashboard_dependency_error() is not None)
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


def worker_log(pid: int, suffix: str) -> str:
    logs = ray._private.worker._global_node.get_logs_dir_path()
    [name] = [f for f in os.listdir(logs) if f.startswith("worker-") and f.endswith(f"-{pid}.{suffix}")]
    with open(os.path.join(logs, name), encoding="utf-8", errors="replace") as f:
        return f.read()


def test_a_lean_instances_actors_send_their_output_with_their_replies(lean_runtime, capfd):
    assert lean_runtime.forward_output
    group = lean_runtime.create_group(Printer, 1, num_cpus=0.5, name="Printer")
    pid = group.pids()[0]
    [result] = group.call("speak", "hello driver", timeout_s=30)
    assert result.value == len("hello driver")
    out, err = capfd.readouterr()
    # what the constructor printed comes with the first reply; C-level writes to fd 2 too
    assert out == f"(Printer 0 pid={pid}) printer 0 built\n(Printer 0 pid={pid}) hello driver\n"
    assert err == f"(Printer 0 pid={pid}) fd2: hello driver\n"
    group.call("speak", "again", timeout_s=30)
    assert capfd.readouterr().out == f"(Printer 0 pid={pid}) again\n"  # only what is new
    # a thread's line after the call, a child process's, and half a line: each in its turn
    group.call("later", "from a thread", timeout_s=30)
    time.sleep(0.5)
    group.call("child", "from a child", timeout_s=30)
    assert capfd.readouterr().out == f"(Printer 0 pid={pid}) from a thread\n(Printer 0 pid={pid}) from a child\n"
    group.call("half_line", "half ", timeout_s=30)
    assert capfd.readouterr().out == ""  # its line is not finished
    group.call("speak", "and the rest", timeout_s=30)
    assert capfd.readouterr().out == f"(Printer 0 pid={pid}) half and the rest\n"
    # Ray's own log files hold everything
    text = worker_log(pid, "out")
    assert all(words in text for words in ("printer 0 built", "hello driver", "from a thread", "from a child"))
    group.shutdown()


def test_output_beyond_the_limit_keeps_the_newest_whole_lines(lean_runtime, capfd):
    from rlfleet.runtime.actor_output import LIMIT_BYTES

    group = lean_runtime.create_group(Printer, 1, num_cpus=0.5, name="Printer")
    group.call("speak", "warm", timeout_s=30)
    capfd.readouterr()
    lines = 3 * LIMIT_BYTES // 100
    [result] = group.call("shout", lines, timeout_s=30)
    assert result.value == lines
    out, err = capfd.readouterr()
    kept = [line.split(") ", 1)[1] for line in out.splitlines()]
    assert kept[-1].startswith(f"line {lines - 1:06d} ")  # the newest line is there
    assert all(len(line) == 99 for line in kept)  # whole lines only
    numbers = [int(line.split()[1]) for line in kept]
    assert numbers == list(range(numbers[0], lines)) and len(kept) in (LIMIT_BYTES // 100, LIMIT_BYTES // 100 - 1)
    assert f"[{lines * 100 - LIMIT_BYTES} earlier bytes of output are only in its Ray log file]" in err
    group.shutdown()


def test_errors_carry_the_output_that_led_to_them_and_a_crash_leaves_its_traceback_in_the_log(lean_runtime):
    group = lean_runtime.create_group(Printer, 1, num_cpus=0.5, name="Printer")
    [result] = group.call("fail", timeout_s=30)
    assert isinstance(result.error, ValueError) and "printer failed" in str(result.error)
    assert "about to fail" in "".join(getattr(result.error, "__notes__", []))
    pid = group.pids()[0]
    [result] = group.call("crash", timeout_s=30)
    assert result.error is not None
    assert "about to crash" in worker_log(pid, "out")
    assert "Fatal Python error" in worker_log(pid, "err")  # the fault handler's traceback, kept
    group.shutdown()
    failing = lean_runtime.create_group(FailingPrinterFactory(), 1, num_cpus=0.5, name="Printer")
    [result] = failing.call("speak", "never", timeout_s=30)
    assert "printer could not be built" in str(result.error)
    assert "printer 0 built" in str(result.error)  # its output, noted in the creation error
    failing.shutdown()


def test_the_lean_start_of_a_training_run_goes_through_the_start_thread(capfd):
    with prestarted("ray", num_cpus=1, num_gpus=0, lean=True):
        runtime = make_runtime("ray", num_cpus=1, num_gpus=0, lean=True)
    try:
        assert head_services() == set() and runtime.forward_output
        group = runtime.create_group(Printer, 1, num_cpus=0.5, name="Printer")
        group.call("speak", "via the start thread", timeout_s=30)
        assert "(Printer 0 pid=" in capfd.readouterr().out
        group.shutdown()
    finally:
        runtime.shutdown()


def test_the_lean_start_restores_rays_node_even_when_the_start_fails():
    from ray._private.node import Node

    from rlfleet.runtime.lean_start import lean_start

    from ray._private import utils as ray_utils

    methods = (Node.start_api_server, Node.start_monitor, Node.start_log_monitor, ray_utils.get_dashboard_dependency_error)
    with pytest.raises(RuntimeError, match="start failed"):
        with lean_start(True):
            assert Node.start_monitor is not methods[1]
            assert isinstance(ray_utils.get_dashboard_dependency_error(), ImportError)
            raise RuntimeError("start failed")
    assert (Node.start_api_server, Node.start_monitor, Node.start_log_monitor,
            ray_utils.get_dashboard_dependency_error) == methods


def test_a_full_instance_leaves_actor_output_to_rays_log_monitor(capfd):
    runtime = make_runtime("ray", num_cpus=1, num_gpus=0, lean=False)
    try:
        assert not runtime.forward_output
        group = runtime.create_group(Printer, 1, num_cpus=0.5, name="Printer")
        [result] = group.call("speak", "via the log monitor", timeout_s=30)
        assert result.value == len("via the log monitor")
        seen = []
        assert wait_until(lambda: seen.append(capfd.readouterr().out) or "via the log monitor" in "".join(seen), 15)
        assert "(Printer pid=" in "".join(seen) and "(Printer 0 pid=" not in "".join(seen)  # Ray's line, not ours
        group.shutdown()
    finally:
        runtime.shutdown()


def test_ray_dashboard_without_rays_dashboard_packages_starts_ray_in_full_and_says_so_in_one_line(monkeypatch, capfd):
    from ray._private import utils as ray_utils

    # what plain `ray` answers (the README's install); ray[default] has the packages
    monkeypatch.setattr(ray_utils, "get_dashboard_dependency_error", lambda: ImportError("No module named 'aiohttp'"))
    runtime = make_runtime("ray", num_cpus=1, num_gpus=0, include_dashboard=True, lean=False)
    try:
        assert runtime.started_ray and head_services() == set(HEAD_SERVICES) and not runtime.forward_output
        group = runtime.create_group(Probe, 1, num_cpus=0.5, name="Probe")
        assert [r.value for r in group.call("whoami")] == [0]
        group.shutdown()
    finally:
        runtime.shutdown()
    notes = [line for line in capfd.readouterr().err.splitlines() if "dashboard" in line]
    assert notes == ["rlfleet: ray_dashboard=true, but this Ray has no dashboard (No module named 'aiohttp'); Ray starts "
                     "in full without it: pip install 'ray[default]' adds it"], notes


def test_the_lean_node_lookup_asks_the_gcs_then_rays_own_lookup(lean_runtime):
    from ray._raylet import GcsClient

    from rlfleet.runtime.lean_start import node_lookup_without_second_polls

    node = ray._private.worker._global_node
    gcs, node_id = node.gcs_address, node.node_id
    # the call the poll relies on exists in this Ray and lists the node (else the poll is skipped)
    assert any(n.hex() == node_id for n in GcsClient(address=gcs).get_all_node_info(timeout=1))
    asked = []
    lookup = node_lookup_without_second_polls(lambda address, nid: asked.append((address, nid)) or "node info")
    assert lookup(gcs, node_id) == "node info" and asked == [(gcs, node_id)]

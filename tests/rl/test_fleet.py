"""The fleet on Ray: weights through the object store, data-parallel learners, runners that
die, hang or crash their simulators, the same config learning locally and on Ray, and a
clean shutdown.

Most tests share one Ray instance (module fixture; starting one costs ~5 s on 2 cores)
that the algorithms join. The shutdown tests need an instance of their own, started by
the code under test, so they run it in a subprocess that leads its own session: every
process it starts (gcs_server, raylet, workers) stays in that session, which tells them
apart from any other Ray on the machine.
"""

import json
import os
import signal
import subprocess
import sys
import textwrap

import numpy as np
import pytest
import ray

from rlfleet.algorithms.ppo import PPOConfig
from rlfleet.envs import EnvFailedError
from rlfleet.envs.testing import CorridorEnv, FlakyEnv
from rlfleet.rl.checkpoint import load_checkpoint
from rlfleet.rl.runners.env_runner_group import EnvRunnerGroup, RunnerFailureError
from rlfleet.scripts.tools.experiment import load_experiment
from rlfleet.runtime.ray_backend import RayRuntime
from tests.fleet_envs import (
    HangingEnv,
    HangOnceEnv,
    WeightsProbe,
    describe,
    in_session,
    processes,
    remote_calls_of,
    start_shared_ray,
    stop_shared_ray,
    wait_until,
    wait_until_gone,
)

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
TRAIN = os.path.join(REPO, "scripts", "train.py")

# 2 runners x 2 envs x 16 steps: a 64-row batch, one 32-row fragment per runner.
FLEET = dict(num_env_runners=2, num_envs_per_runner=2, rollout_fragment_length=16, minibatch_size=32, num_epochs=1)
FRAGMENT_STEPS = 2 * 16


@pytest.fixture(scope="module")
def shared_ray():
    start_shared_ray()
    yield
    stop_shared_ray()


def fleet(**overrides):
    config = {"env": "CartPole-v1", "seed": 0, **FLEET, **overrides}
    return PPOConfig(**config).build()


def runner_steps(result, index):
    return result.get(f"env_runners/{index}/env_steps", 0)


def args_of(pid):
    return next((p.args for p in processes() if p.pid == pid), "")


# ---------------------------------------------------------------------------------------
# Weights go to the fleet through the object store: put once, a reference per runner.


@pytest.fixture(scope="module")
def cartpole_fleet(shared_ray):
    algo = fleet()
    yield algo
    algo.stop()


def test_each_broadcast_is_one_put_and_runners_get_the_reference(cartpole_fleet, monkeypatch):
    algo = cartpole_fleet
    assert isinstance(algo.runtime, RayRuntime) and algo.runtime.started_ray is False
    puts = []
    real_put = algo.runtime.put

    def spy_put(obj):
        ref = real_put(obj)
        puts.append((obj, ref))
        return ref

    monkeypatch.setattr(algo.runtime, "put", spy_put)
    with remote_calls_of(algo.env_runner_group.group) as sent:
        results = [algo.train() for _ in range(3)]

    assert [r["weights_version"] for r in results] == [2, 3, 4]
    assert len(puts) == 3, "one put per broadcast, whatever the number of runners"
    broadcasts = [args for _, args in sent if args[0] == "set_weights"]
    assert len(broadcasts) == 3 * 2
    for k, (weights, ref) in enumerate(puts):
        assert isinstance(weights, dict) and all(isinstance(v, np.ndarray) for v in weights.values())
        to_runners = broadcasts[2 * k : 2 * k + 2]
        for args in to_runners:
            assert isinstance(args[1], ray.ObjectRef), f"runner got {type(args[1]).__name__}, not a reference"
            assert args[1] == ref.ref
            assert args[2] == results[k]["weights_version"]
            assert not any(isinstance(a, (dict, np.ndarray)) for a in args)
    # Every runner sampled with the weights of the broadcast before its fragment.
    assert all(r["policy_lag_max"] == 0 for r in results)


@pytest.mark.parametrize("num_runners", [1, 3])
def test_runners_read_the_single_stored_copy_zero_copy(shared_ray, num_runners):
    runtime = RayRuntime()
    group = EnvRunnerGroup(runtime, WeightsProbe, num_runners, num_cpus_per_runner=0.25)
    try:
        weights = {"w": np.full((64, 64), 0.5, np.float32), "b": np.arange(64, dtype=np.float32)}
        with remote_calls_of(group.group) as sent:
            group.sync_weights(weights, 7)
        assert runtime.num_puts == 1
        assert len(sent) == num_runners
        assert len({args[1] for _, args in sent}) == 1 and isinstance(sent[0][1][1], ray.ObjectRef)
        # Read-only numpy arrays: views of the object store's buffer, not unpickled copies.
        expected = ({"w": ("ndarray", False, 2048.0), "b": ("ndarray", False, 2016.0)}, 7)
        assert [r.value for r in group.group.call("history")] == [[expected]] * num_runners
    finally:
        group.stop()


def test_runner_processes_are_named_env_runner(cartpole_fleet):
    pids = cartpole_fleet.env_runner_group.group.pids()
    assert len(set(pids)) == 2 and os.getpid() not in pids
    for pid in pids:
        assert args_of(pid).startswith("ray::EnvRunner"), args_of(pid)


def test_runners_of_the_default_policy_never_load_torch(cartpole_fleet):
    # They act in numpy (rl/models/numpy_policy.py): torch would cost each about 150 MiB.
    cartpole_fleet.train()
    for pid in cartpole_fleet.env_runner_group.group.pids():
        with open(f"/proc/{pid}/maps") as f:
            libraries = f.read()
        assert "libtorch" not in libraries and "/torch/" not in libraries, f"runner {pid} loaded torch"
        assert "numpy" in libraries  # the check reads a live runner's mappings


# ---------------------------------------------------------------------------------------
# Runners that die or hang: restarted, their fragment dropped, training goes on.


def test_a_runner_killed_with_sigkill_is_restarted_and_training_goes_on(shared_ray, capsys):
    algo = fleet()
    try:
        group = algo.env_runner_group.group
        results = [algo.train(), algo.train()]
        pids = group.pids()
        os.kill(pids[0], signal.SIGKILL)
        results += [algo.train() for _ in range(3)]

        assert [r["iteration"] for r in results] == [1, 2, 3, 4, 5]
        hit, after = results[2], results[3:]
        assert hit["num_env_runner_restarts"] == 1 and hit["num_fragments_dropped"] == 1
        # The iteration of the kill learned from the fragment the other runner returned.
        assert hit["env_steps"] - results[1]["env_steps"] == FRAGMENT_STEPS
        assert runner_steps(hit, 0) == runner_steps(results[1], 0)
        assert runner_steps(hit, 1) - runner_steps(results[1], 1) == FRAGMENT_STEPS
        assert all(r["learner/num_grad_steps"] >= 1 for r in results)
        # Afterwards both runners deliver again, sampling with the current weights.
        for prev, r in zip(results[2:], after):
            assert [runner_steps(r, i) - runner_steps(prev, i) for i in (0, 1)] == [FRAGMENT_STEPS] * 2
            assert r["num_env_runner_restarts"] == 1 and r["policy_lag_max"] == 0
        new_pids = group.pids()
        assert new_pids[0] != pids[0] and new_pids[1] == pids[1]
        assert args_of(new_pids[0]).startswith("ray::EnvRunner")
        err = capsys.readouterr().err
        assert "env runner 0 failed (" in err and "restarting it" in err

        # Kill both: the iteration has nothing to learn from and broadcasts nothing, so the
        # restarted runners' next fragments show whether restart gave them the weights.
        version = algo.weights_version
        for pid in new_pids:
            os.kill(pid, signal.SIGKILL)
        empty = algo.train()
        assert empty["iteration"] == 6 and empty["env_steps"] == results[-1]["env_steps"]
        assert empty["num_env_runner_restarts"] == 3 and empty["weights_version"] == version
        resumed = algo.train()
        assert resumed["iteration"] == 7 and resumed["env_steps"] == empty["env_steps"] + 2 * FRAGMENT_STEPS
        assert resumed["policy_lag_max"] == 0, "a restarted runner sampled with stale weights"
    finally:
        algo.stop()


def test_runners_whose_constructor_raises_end_the_run_at_once_naming_the_error(shared_ray):
    """Issue 30: runners that could not import the user's module were restarted until
    restart_timeout_s ran out and the run ended naming Ray's preamble, not the import."""
    from rlfleet.rl.runners.env_runner_group import RunnerFailureError
    from tests.fleet_envs import ImportsInRunnersEnv

    with pytest.raises(RunnerFailureError) as failed:
        algo = PPOConfig(env=ImportsInRunnersEnv, env_config={"driver_pid": os.getpid()}, seed=0,
                         **{**FLEET, "restart_timeout_s": 600.0}).build()
        try:
            algo.train()
        finally:
            algo.stop()
    assert str(failed.value).startswith("env runner ")
    assert "cannot start: ModuleNotFoundError: No module named 'no_such_module_of_the_user' (a module of yours? " \
           "give it with --import)" in str(failed.value)  # after one restart, not restart_timeout_s (600 s)


def test_an_iteration_that_lost_a_runner_still_learns(shared_ray):
    # One minibatch of the whole train batch: after losing a runner the batch is half that,
    # which must shrink the minibatch, not skip the update.
    algo = fleet(minibatch_size=2 * FRAGMENT_STEPS)
    try:
        algo.train()
        before = algo.learner_group.get_weights()
        os.kill(algo.env_runner_group.group.pids()[1], signal.SIGKILL)
        result = algo.train()
        after = algo.learner_group.get_weights()
    finally:
        algo.stop()
    assert result["num_fragments_dropped"] == 1 and result["env_steps"] == 3 * FRAGMENT_STEPS
    assert result["learner/num_grad_steps"] >= 1, "the fragment that arrived was not learned from"
    assert any(not np.array_equal(before[k], after[k]) for k in before)


def test_a_runner_that_hangs_past_the_timeout_is_restarted(shared_ray, tmp_path):
    flag = tmp_path / "hang-now"
    algo = fleet(env=HangOnceEnv, env_config={"flag_path": str(flag)}, sample_timeout_s=3.0)
    try:
        group = algo.env_runner_group.group
        first = algo.train()
        pids = group.pids()
        flag.touch()  # the next step of any sub-env claims it and blocks forever
        hung = algo.train()
        assert not flag.exists()
        stalled = [i for i in (0, 1) if runner_steps(hung, i) == runner_steps(first, i)]
        assert len(stalled) == 1, hung
        (i,) = stalled
        assert hung["iteration"] == 2 and hung["env_steps"] == first["env_steps"] + FRAGMENT_STEPS
        assert hung["num_env_runner_restarts"] == 1 and hung["num_fragments_dropped"] == 1
        assert not wait_until_gone([pids[i]], timeout_s=20), "the hung runner's process was not ended"
        assert group.pids()[1 - i] == pids[1 - i]

        resumed = algo.train()
        assert [runner_steps(resumed, j) - runner_steps(hung, j) for j in (0, 1)] == [FRAGMENT_STEPS] * 2
        assert resumed["num_env_runner_restarts"] == 1 and resumed["policy_lag_max"] == 0
    finally:
        algo.stop()


def test_runners_failing_in_consecutive_iterations_stop_the_run(shared_ray):
    algo = fleet(env=HangingEnv, num_env_runners=1, minibatch_size=16, sample_timeout_s=1.0,
                 max_consecutive_runner_failures=2)
    try:
        first = algo.train()
        assert (first["iteration"], first["env_steps"], first["num_env_runner_restarts"]) == (1, 0, 1)
        with pytest.raises(RunnerFailureError) as info:
            algo.train()
    finally:
        algo.stop()
    assert str(info.value) == (
        "env runners failed in 2 consecutive iterations; "
        "last error: TimeoutError: actor 0 did not answer within 1.0 s"
    )


# ---------------------------------------------------------------------------------------
# Simulators that crash now and then: the sub-env is recreated, the episode dropped.

FLAKY = dict(env=FlakyEnv, env_config={"fail_every": 50}, num_envs_per_runner=4, rollout_fragment_length=25,
             minibatch_size=50, num_epochs=1, metrics_smoothing_episodes=100_000, seed=0)


def assert_no_crashed_episode_in(returns, lengths):
    # FlakyEnv is a 5-cell corridor with 30 steps: a whole episode either reaches the goal
    # (return 1 - 0.01 (L - 1) >= 0.71, L >= 5 steps) or is truncated at 30 (-0.30). An
    # episode cut by a crash after k steps would score -0.01 (k - 1), between -0.28 and 0.
    assert returns, "no episode finished"
    assert all(r >= 0.7 or r == pytest.approx(-0.30) for r in returns), sorted(returns)[:10]
    assert all(5 <= n <= 30 for n in lengths), sorted(lengths)[:10]


def test_flaky_simulator_on_ray_runners_trains_to_the_end(shared_ray):
    algo = PPOConfig(**FLAKY, num_env_runners=2).build()
    try:
        results = [algo.train() for _ in range(5)]
        returns, lengths = list(algo.episode_returns), list(algo.episode_lengths)
    finally:
        algo.stop()
    last = results[-1]
    assert [r["iteration"] for r in results] == [1, 2, 3, 4, 5]
    assert last["env_steps"] == 5 * 2 * 100 and last["num_env_runner_restarts"] == 0
    # Each runner process counts its own steps and crashes on every 50th: 500 steps, 10 crashes.
    assert [runner_steps(last, i) for i in (0, 1)] == [500, 500]
    assert last["num_env_errors"] == 2 * (500 // 50)
    assert_no_crashed_episode_in(returns, lengths)


def test_flaky_simulator_in_process_trains_to_the_end(monkeypatch):
    monkeypatch.setattr(FlakyEnv, "calls", 0)  # the crash counter is per process
    algo = PPOConfig(**FLAKY).build()
    try:
        results = [algo.train() for _ in range(5)]
        returns, lengths = list(algo.episode_returns), list(algo.episode_lengths)
    finally:
        algo.stop()
    assert [r["iteration"] for r in results] == [1, 2, 3, 4, 5]
    assert [r["num_env_errors"] for r in results] == [2, 4, 6, 8, 10]  # 100 steps per iteration
    assert_no_crashed_episode_in(returns, lengths)


def test_a_sub_env_that_always_raises_ends_the_run_naming_it(monkeypatch):
    monkeypatch.setattr(FlakyEnv, "calls", 0)
    algo = PPOConfig(env=FlakyEnv, env_config={"fail_every": 1}, env_error_retries=2, num_envs_per_runner=2,
                     rollout_fragment_length=8, minibatch_size=16).build()
    try:
        with pytest.raises(EnvFailedError, match=r"^env 'FlakyEnv' failed 3 times in a row; last error: "
                                                 r"RuntimeError: simulated crash at call \d+$"):
            algo.train()
    finally:
        algo.stop()


# ---------------------------------------------------------------------------------------
# The same config learns on both backends (seeded).

CORRIDOR = dict(env=CorridorEnv, env_config={"length": 10}, seed=0, rollout_fragment_length=32, minibatch_size=64,
                num_epochs=4, lr=3e-3)
CORRIDOR_OPTIMUM = 1.0 - 9 * 0.01


@pytest.mark.parametrize("backend", ["local", "ray"])
def test_ppo_learns_the_corridor_locally_and_on_ray(backend, request):
    # 256 rows per iteration either way: 8 envs in this process, or 2 Ray runners x 4 envs.
    if backend == "ray":
        request.getfixturevalue("shared_ray")
        fleet_size = dict(num_env_runners=2, num_envs_per_runner=4)
    else:
        fleet_size = dict(num_env_runners=0, num_envs_per_runner=8)
    algo = PPOConfig(**CORRIDOR, **fleet_size).build()
    try:
        assert algo.runtime.name == backend
        for _ in range(15):
            result = algo.train()
        evaluation = algo.evaluate()
    finally:
        algo.stop()
    assert result["env_steps"] == 15 * 256
    assert result["episode_return_mean"] >= 0.7, result["episode_return_mean"]  # random: -0.18
    assert evaluation["evaluation/episode_return_min"] == pytest.approx(CORRIDOR_OPTIMUM)


@pytest.mark.learning
@pytest.mark.parametrize("backend", ["local", "ray"])
def test_tuned_cartpole_learns_locally_and_with_two_ray_runners(backend, request):
    # The tuned example as it is (16 envs x 16 steps per runner), sampled in this process
    # or by 2 Ray runners (twice the rows per iteration). Seeds 0-3 first reached a mean
    # return of 150 at 17k-28k env steps on both backends; the test allows 60k.
    experiment = load_experiment(os.path.join(REPO, "tuned_examples", "ppo", "CartPole-v1.yaml"))
    runners = 0
    if backend == "ray":
        request.getfixturevalue("shared_ray")
        runners = 2
    algo = PPOConfig.from_dict({**experiment.config, "env": experiment.env, "seed": 0,
                                "num_env_runners": runners}).build()
    history = []
    try:
        while not history or not (history[-1][1] >= 150 or history[-1][0] >= 60_000):  # NaN: no episode yet
            result = algo.train()
            history.append((result["env_steps"], round(result["episode_return_mean"], 1)))
    finally:
        algo.stop()
    env_steps, ret = history[-1]
    assert ret >= 150 and env_steps <= 60_000, f"(env_steps, mean return) every 10th iteration: {history[::10]}"


# ---------------------------------------------------------------------------------------
# Clean shutdown: nothing of Ray is left once the run ends, however it ends.

STOP_SCRIPT = textwrap.dedent("""\
    import json, sys
    sys.path.insert(0, {repo!r})
    import ray
    from rlfleet.algorithms.ppo import PPOConfig

    algo = PPOConfig(env="CartPole-v1", num_env_runners=2, num_envs_per_runner=2, rollout_fragment_length=16,
                     minibatch_size=32, num_epochs=1).build()
    algo.train()
    print(json.dumps({{"started_ray": algo.runtime.started_ray,
                       "runners": algo.env_runner_group.group.pids()}}), flush=True)
    sys.stdin.readline()
    algo.stop()
    print(json.dumps({{"initialized": ray.is_initialized()}}), flush=True)
    sys.stdin.readline()  # stay alive: what is left now was left by stop(), not by exit
""")


def names(procs):
    return [p.args.split()[0].rsplit("/", 1)[-1] for p in procs]


def start_stop_script(tmp_path):
    """The driver of STOP_SCRIPT in a session of its own, trained once and waiting."""
    script = tmp_path / "stop.py"
    script.write_text(STOP_SCRIPT.format(repo=REPO))
    return subprocess.Popen([sys.executable, str(script)], cwd=tmp_path, stdin=subprocess.PIPE,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, start_new_session=True)


def test_an_algorithm_that_started_ray_leaves_no_process_after_stop(tmp_path):
    proc = start_stop_script(tmp_path)
    try:
        started = json.loads(proc.stdout.readline() or "null")
        assert started, proc.stderr.read() if proc.poll() is not None else "no first line"
        running = in_session(proc.pid, exclude=(proc.pid,))
        assert started["started_ray"] is True
        assert {"gcs_server", "raylet"} <= set(names(running)), describe(running)
        runners = [p for p in running if p.args.startswith("ray::EnvRunner")]
        assert sorted(p.pid for p in runners) == sorted(started["runners"])

        proc.stdin.write("stop\n")
        proc.stdin.flush()
        assert json.loads(proc.stdout.readline()) == {"initialized": False}
        gone = wait_until(lambda: not in_session(proc.pid, exclude=(proc.pid,)), 30)
        assert gone, f"left after stop():\n{describe(in_session(proc.pid, exclude=(proc.pid,)))}"
        proc.stdin.write("exit\n")
        proc.stdin.flush()
        assert proc.wait(timeout=60) == 0, proc.stderr.read()
    finally:
        kill_session(proc)


def test_a_killed_driver_leaves_no_process_of_its_ray_instance_after_10_s(tmp_path):
    proc = start_stop_script(tmp_path)
    try:
        assert json.loads(proc.stdout.readline() or "null"), "no first line"
        running = in_session(proc.pid, exclude=(proc.pid,))
        assert {"gcs_server", "raylet"} <= set(names(running)), describe(running)
        watchdogs = [p for p in processes() if f"rlfleet.runtime.watchdog {proc.pid}" in p.args]
        assert len(watchdogs) == 1
        proc.kill()  # SIGKILL: no stop(), no ray.shutdown()
        proc.wait()
        left = wait_until_gone([p.pid for p in running + watchdogs], timeout_s=10)
        assert not left, f"left 10 s after the driver was killed:\n{describe(left)}"
    finally:
        kill_session(proc)


def kill_session(proc):
    """End the subprocess and anything of its session still running (only if a test failed)."""
    if proc.poll() is None:
        proc.kill()
        proc.wait()
    for p in in_session(proc.pid):
        try:
            os.kill(p.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass


def test_ctrl_c_of_train_py_checkpoints_exits_130_and_leaves_no_ray_process(tmp_path):
    logdir = tmp_path / "run"
    proc = subprocess.Popen(
        [sys.executable, TRAIN, "--algo", "ppo", "--env", "CartPole-v1", "--num-env-runners", "2",
         "--stop-timesteps", "10000000", "--logdir", str(logdir)],
        cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, start_new_session=True,
    )
    try:
        seen = []
        for line in proc.stdout:
            seen.append(line)
            if line.startswith("iter "):
                break
        assert seen and seen[-1].startswith("iter "), "".join(seen) + proc.stderr.read()
        running = in_session(proc.pid, exclude=(proc.pid,))
        assert len([p for p in running if p.args.startswith("ray::EnvRunner")]) == 2, describe(running)

        os.killpg(proc.pid, signal.SIGINT)  # Ctrl-C: the whole foreground process group
        out, err = proc.communicate(timeout=60)
        assert proc.returncode == 130, out + err
        assert "Traceback" not in err, err
        gone = wait_until(lambda: not in_session(proc.pid), 30)
        assert gone, f"left after Ctrl-C:\n{describe(in_session(proc.pid))}"
        # Interrupted after at least one finished iteration: the checkpoint keeps it, and the
        # summary line reports what the checkpoint holds.
        done = out.strip().splitlines()[-1]
        checkpoint = logdir / "checkpoint"
        assert done.startswith("done: ") and done.endswith(f"; checkpoint {checkpoint}"), done
        counters = load_checkpoint(str(logdir / "checkpoint"))["counters"]
        assert counters["iteration"] >= 1 and counters["env_steps"] >= 1
        assert done.startswith(f"done: {counters['iteration']} iterations, {counters['env_steps']} env steps, "), done
    finally:
        kill_session(proc)


def test_a_second_algorithm_that_cannot_be_placed_says_why_instead_of_blocking(shared_ray):
    from rlfleet.runtime import InsufficientResourcesError

    small = dict(env="CartPole-v1", num_envs_per_runner=2, rollout_fragment_length=16, minibatch_size=32, num_epochs=1)
    free = settled_free_cpus()  # other tests' fleets may hold some
    assert free >= 2, ray.available_resources()
    first = PPOConfig(**small, num_env_runners=free - 1).build()  # all but one of the free CPUs
    try:
        first.train()
        with pytest.raises(InsufficientResourcesError, match=r"^2 EnvRunner actors ask for 2 CPUs, the Ray instance "
                                                             r"of this process has 1 free; stop\(\) the algorithm"):
            PPOConfig(**small, num_env_runners=2).build()
        second = PPOConfig(**small, num_env_runners=1).build()  # what fits is placed
        try:
            assert second.train()["env_steps"] > 0
        finally:
            second.stop()
    finally:
        first.stop()


def settled_free_cpus() -> int:
    """The shared instance's free CPUs once they stop changing (actors stopped or killed a
    moment ago free theirs with a delay)."""
    import time

    readings = [-1.0]
    while len(readings) < 3 or readings[-1] != readings[-2]:
        time.sleep(0.5)
        readings.append(ray.available_resources().get("CPU", 0.0))
    return int(readings[-1])


@ray.remote
class _Blocker:
    def ping(self) -> bool:
        return True


def test_a_runner_whose_restart_cannot_be_placed_is_given_up_and_training_goes_on(shared_ray, capsys):
    small = dict(env="CartPole-v1", num_envs_per_runner=2, rollout_fragment_length=16, minibatch_size=32, num_epochs=1)
    algo = PPOConfig(**small, num_env_runners=2, restart_timeout_s=3.0).build()
    blocker = None
    try:
        algo.train()
        free = settled_free_cpus()
        os.kill(algo.env_runner_group.group.pids()[0], signal.SIGKILL)  # as if its node were gone
        while settled_free_cpus() != free + 1:
            pass
        blocker = _Blocker.options(num_cpus=free + 1).remote()  # the rest of the cluster is full
        assert ray.get(blocker.ping.remote(), timeout=30)
        result = algo.train()
        assert result["num_env_runners_lost"] == 1 and result["num_env_runner_restarts"] == 1
        assert "env runner 0 could not be restarted within 3.0 s" in capsys.readouterr().err
        before = result["env_runners/1/env_steps"]
        result = algo.train()  # the fleet goes on with the runner it has
        assert result["env_runners/1/env_steps"] == before + 32 and result["env_runners/0/env_steps"] == 32
    finally:
        if blocker is not None:
            ray.kill(blocker)
        algo.stop()

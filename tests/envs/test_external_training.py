"""Training runs fed by external simulators: spaces declared by the first client's hello,
IMPALA and DQN besides PPO, and Ray runners that each listen on ``port + index``."""

from __future__ import annotations

import socket
import struct
import subprocess
import sys
import threading

import msgpack
import numpy as np
import pytest
from gymnasium import spaces

from rlfleet.algorithms.dqn import DQNConfig
from rlfleet.algorithms.impala import IMPALAConfig
from rlfleet.algorithms.ppo import PPOConfig
from rlfleet.algorithms.sac import SACConfig
from rlfleet.envs.external import ExternalError, PolicyClient
from rlfleet.envs.external.server import await_declared_spaces
from rlfleet.envs.schema import space_to_schema

OBS = spaces.Box(-10.0, 10.0, (2,), np.float32)
ACT = spaces.Discrete(3)
SCHEMAS = {"observation_space": space_to_schema(OBS), "action_space": space_to_schema(ACT)}
SMALL = {"num_envs_per_runner": 2, "rollout_fragment_length": 8, "hidden_sizes": [16], "log_to_console": False}


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def raw_hello(port: int, **fields) -> dict:
    """One hello over a bare socket (no client library); the server's reply."""
    with socket.create_connection(("127.0.0.1", port), timeout=10) as sock:
        body = msgpack.packb({"v": 1, "type": "hello", "name": "raw", **fields}, use_bin_type=True)
        sock.sendall(struct.pack(">I", len(body)) + body)
        length = struct.unpack(">I", sock.recv(4, socket.MSG_WAITALL))[0]
        return msgpack.unpackb(sock.recv(length, socket.MSG_WAITALL), raw=False)


def connect_when_listening(port: int) -> None:
    """Block until something listens on ``port`` (the probe), without speaking to it."""
    while True:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=1).close()
            return
        except ConnectionRefusedError:
            threading.Event().wait(0.05)


def test_the_first_good_hello_declares_the_spaces_and_is_told_to_reconnect():
    port, found = free_port(), {}

    def wait():
        found["spaces"] = await_declared_spaces(
            host="127.0.0.1", port=port, token="s3cret", timeout_s=30,
            check=lambda obs, act: None if obs.get("type") == "box" else f"hello: observation_space {obs} is no box")

    waiter = threading.Thread(target=wait)
    waiter.start()
    connect_when_listening(port)  # a connection that never speaks is skipped after its hello timeout
    wrong_token = raw_hello(port, token="guess", **SCHEMAS)
    assert wrong_token["type"] == "error" and wrong_token["message"] == "wrong or missing token"
    bad_space = raw_hello(port, token="s3cret", observation_space={"type": "discrete", "n": 2},
                          action_space=SCHEMAS["action_space"])
    assert bad_space["type"] == "error" and "is no box" in bad_space["message"]
    no_spaces = raw_hello(port, token="s3cret")
    assert no_spaces["type"] == "error" and "send observation_space and action_space" in no_spaces["message"]
    good = raw_hello(port, token="s3cret", **SCHEMAS)
    waiter.join(timeout=10)
    assert good["type"] == "reconnect" and good["after_s"] > 0
    assert found["spaces"] == (SCHEMAS["observation_space"], SCHEMAS["action_space"])


def test_waiting_for_a_hello_that_never_comes_is_a_timeout_error():
    with pytest.raises(TimeoutError, match=r"no simulator said hello on 127.0.0.1:\d+ within 0.5 s"):
        await_declared_spaces(host="127.0.0.1", port=free_port(), token=None, timeout_s=0.5, check=lambda o, a: None)


def play(port: int, episodes: int, stop: threading.Event | None = None, schemas: dict = SCHEMAS) -> int:
    """A simulator's loop: episodes of 3 steps, reward 1 each, until ``episodes`` or ``stop``.
    (One told to reconnect may find the run already stopped: it retries for 5 s.)"""
    done = 0
    try:
        with PolicyClient(port=port, name="sim", connect_timeout_s=5, **schemas) as client:
            while done < episodes and not (stop and stop.is_set()):
                client.start_episode()
                for t in range(3):
                    client.get_action(np.full(2, t, np.float32))
                    client.log_reward(1.0)
                client.end_episode(np.zeros(2, np.float32), terminated=True)
                done += 1
    except (ConnectionError, ExternalError, OSError):
        pass  # the run stopped under us
    return done


def test_a_run_without_spaces_in_its_config_takes_them_from_the_first_hello():
    port, stop, built = free_port(), threading.Event(), {}
    config = PPOConfig.from_dict({**SMALL, "minibatch_size": 8, "env": "external",
                                  "env_config": {"port": port, "spaces_timeout_s": 60}},
                                 source="test")
    builder = threading.Thread(target=lambda: built.setdefault("algo", config.build()))
    builder.start()
    sims = [threading.Thread(target=play, args=(port, 10_000, stop)) for _ in range(2)]
    for s in sims:
        s.start()  # the first hello declares the spaces; both reconnect once the runner listens
    builder.join(timeout=120)
    algo = built["algo"]
    try:
        assert algo.module_spec.observation_space == OBS and algo.module_spec.action_space == ACT
        result = algo.train()
        assert result["env_steps"] >= 16 and result["episode_return_mean"] == 3.0
        other = {"observation_space": space_to_schema(spaces.Box(-1.0, 1.0, (3,), np.float32)),
                 "action_space": SCHEMAS["action_space"]}
        with pytest.raises(ExternalError, match=r"hello: observation_space .* differs from this runner's"):
            PolicyClient(port=port, connect_timeout_s=5, **other)
    finally:
        stop.set()
        algo.stop()
        for s in sims:
            s.join(timeout=30)


def test_one_declared_space_without_the_other_is_a_config_error():
    from rlfleet.rl.runners.external_runner import ExternalConfigError

    with pytest.raises(ExternalConfigError, match="has env_config observation_space but no action_space"):
        PPOConfig.from_dict({**SMALL, "minibatch_size": 8, "env": "external",
                             "env_config": {"observation_space": SCHEMAS["observation_space"]}}, source="test").build()


@pytest.mark.parametrize("config_class, extra", [
    (IMPALAConfig, {"train_batch_fragments": 1}),
    (DQNConfig, {"learning_starts": 16, "minibatch_size": 8, "replay_ratio": 0.5}),
    (SACConfig, {"learning_starts": 16, "minibatch_size": 8, "replay_ratio": 0.5}),
], ids=["impala", "dqn", "sac"])
def test_impala_and_dqn_train_from_external_simulators(config_class, extra):
    port = free_port()
    algo = config_class.from_dict({**SMALL, **extra, "env": "external",
                                   "env_config": {"spaces_from": "CartPole-v1", "port": port}}, source="test").build()
    sims = subprocess.Popen([sys.executable, "-m", "rlfleet.envs.external.example", "--port", str(port),
                             "--connections", "2"])
    try:
        before = {k: v.copy() for k, v in algo.learner_group.get_weights().items()}
        results = [algo.train() for _ in range(4)]
        while results[-1]["episodes_total"] == 0 and len(results) < 40:  # CartPole's first episodes: ~20 steps
            results.append(algo.train())
        after = algo.learner_group.get_weights()
        steps = [r["env_steps"] for r in results]
        assert steps == sorted(steps) and steps[-1] > steps[0]  # IMPALA's iteration may find no new fragment
        assert results[-1]["episodes_total"] > 0 and np.isfinite(results[-1]["episode_return_mean"])
        assert any(not np.array_equal(before[k], after[k]) for k in before)  # the learner updated
    finally:
        algo.stop()
        finish([sims])


def test_ray_runners_each_listen_on_port_plus_index(shared_ray):
    port = free_port()
    while any(_taken(port + i) for i in range(1, 2)):
        port = free_port()
    algo = PPOConfig.from_dict({**SMALL, "minibatch_size": 8, "num_env_runners": 2, "env": "external",
                                "env_config": {"spaces_from": "CartPole-v1", "port": port}}, source="test").build()
    sims = [subprocess.Popen([sys.executable, "-m", "rlfleet.envs.external.example", "--port", str(port + i),
                              "--connections", "2", "--seed", str(i)]) for i in range(2)]
    try:
        for _ in range(3):
            result = algo.train()
        assert result["env_runners/0/env_steps"] > 0 and result["env_runners/1/env_steps"] > 0
    finally:
        algo.stop()
        finish(sims)


def finish(procs: list[subprocess.Popen]) -> None:
    """The simulators end when the run stops; one still connecting (it retries a refused
    connection for a minute) when an assertion stopped the run early is killed."""
    for p in procs:
        try:
            p.wait(timeout=30)
        except subprocess.TimeoutExpired:
            p.kill()
            p.wait()


def _taken(port: int) -> bool:
    with socket.socket() as s:
        try:
            s.bind(("127.0.0.1", port))
        except OSError:
            return True
    return False


def test_train_py_waiting_in_vain_for_a_hello_exits_3_with_one_line(tmp_path):
    import os

    script = os.path.join(os.path.dirname(__file__), "..", "..", "scripts", "train.py")
    port = free_port()
    proc = subprocess.run([sys.executable, script, "--algo", "ppo", "--env", "external", "--logdir", str(tmp_path / "run"),
                           "--set", f"env_config={{port: {port}, spaces_timeout_s: 0.5}}"],
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 3
    assert proc.stderr.strip().splitlines()[-1] == (
        f"train.py: run failed (last checkpoint kept): env 'external': no simulator said hello on 127.0.0.1:{port} "
        "within 0.5 s to declare the spaces")


def test_a_recurrent_policy_keeps_each_connections_state_through_its_episodes():
    # Two simulators, 3-step episodes, 8-step columns: each column is one connection's run
    # of steps, so its state_in is zeros at each episode start and otherwise the state after
    # the step before. Client-side inference cannot carry the state: refused in one line.
    import torch

    port, stop = free_port(), threading.Event()
    config = PPOConfig.from_dict({**SMALL, "minibatch_size": 8, "env": "external", "memory": "gru", "memory_size": 4,
                                  "max_seq_len": 4, "env_config": {"port": port, **SCHEMAS}}, source="test")
    algo = config.build()
    sims = [threading.Thread(target=play, args=(port, 10_000, stop)) for _ in range(2)]
    for s in sims:
        s.start()
    try:
        batch = algo.sample()[0].batch
        module = algo.module_spec.build()
        module.load_state_dict({k: torch.from_numpy(v) for k, v in algo.learner_group.get_weights().items()})
        result = algo.train()
        with PolicyClient(port=port, connect_timeout_s=5, **SCHEMAS) as client:
            with pytest.raises(ExternalError, match="client-side inference of a policy with memory is not built"):
                client.fetch_policy()
    finally:
        stop.set()
        algo.stop()
        for s in sims:
            s.join(timeout=30)
    state_in, is_first = batch["state_in"], batch["is_first"]
    assert state_in.shape == (8, 2, 4) and is_first.sum() >= 4  # episodes start inside the columns
    assert np.all(state_in[is_first] == 0.0)
    with torch.no_grad():
        for t in range(1, 8):
            for b in range(2):
                if not is_first[t, b]:
                    _, after = module.step_features(torch.from_numpy(batch["obs"][t - 1, b][None]),
                                                    torch.from_numpy(state_in[t - 1, b][None]))
                    np.testing.assert_allclose(state_in[t, b], after[0].numpy(), atol=1e-5)
    assert np.abs(state_in).max() > 1e-3 and np.isfinite(result["losses/policy_loss"])

"""External simulators over the wire protocol (envs/external/PROTOCOL.md): the framing,
a client that needs no torch, gymnasium or Ray, the runner's fragments (rewards, episode
ends and truncation bootstrapping by hand), and the faults a simulator can commit."""

from __future__ import annotations

import signal
import socket
import struct
import subprocess
import sys
import threading
import time

import msgpack
import numpy as np
import pytest
from gymnasium import spaces

from rlfleet.envs.external import PolicyClient, ProtocolError
from rlfleet.envs.external.protocol import decode, encode, pack, unpack
from rlfleet.rl.runners.external_runner import ExternalEnvRunner
from rlfleet.rl.models.module import ModuleSpec
from rlfleet.rl.postprocessing import compute_gae
from rlfleet.envs.schema import space_to_schema
from tests.extras import require_extra

OBS = spaces.Box(-10.0, 10.0, (2,), np.float32)
ACT = spaces.Discrete(3)
SCHEMAS = {"observation_space": space_to_schema(OBS), "action_space": space_to_schema(ACT)}


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture
def runner(request):
    """An external runner on a free port: fragments of ``columns`` x ``length``."""
    options = getattr(request, "param", {})
    port = free_port()
    r = ExternalEnvRunner(module_spec=ModuleSpec(OBS, ACT), env_config={"port": port, **options.get("env", {})},
                          num_columns=options.get("columns", 1), fragment_length=options.get("length", 2), seed=0,
                          index=0, sample_timeout_s=options.get("timeout", 20.0))
    r.port = port
    yield r
    r.stop()


def client(port: int, **kw) -> PolicyClient:
    return PolicyClient(port=port, **SCHEMAS, **kw)


# --- the wire format -------------------------------------------------------------------------


def test_arrays_and_nesting_round_trip_and_frames_carry_the_version():
    value = {"img": np.arange(24, dtype=np.uint8).reshape(2, 3, 4), "pos": np.array([1.5, -2.0], np.float32),
             "mode": 3, "parts": [np.zeros(2, np.int64), 7]}
    back = decode(msgpack.unpackb(msgpack.packb(encode(value), use_bin_type=True), raw=False))
    np.testing.assert_array_equal(back["img"], value["img"])
    assert back["img"].dtype == np.uint8 and back["pos"].dtype == np.float32 and back["mode"] == 3
    np.testing.assert_array_equal(back["parts"][0], [0, 0])
    frame = pack({"type": "ok"})
    assert struct.unpack(">I", frame[:4])[0] == len(frame) - 4
    assert unpack(frame[4:]) == {"v": 1, "type": "ok"}


@pytest.mark.parametrize("body,message", [
    (b"\xc1\xc1garbage", "frame is not msgpack"),
    (msgpack.packb([1, 2]), "a message is a map"),
    (msgpack.packb({"v": 2, "type": "hello"}), "protocol version 2, this server speaks 1"),
    (msgpack.packb({"v": 1}), "a message needs a 'type'"),
])
def test_malformed_frames_are_refused_by_name(body, message):
    with pytest.raises(ProtocolError, match=message):
        unpack(body)
    with pytest.raises(ProtocolError, match="does not fill shape"):
        decode({"dtype": "float32", "shape": [3], "data": b"\x00" * 8})


def test_the_client_imports_without_torch_gymnasium_or_ray():
    code = (
        "import sys\n"
        "class Blocked:\n"
        "    def find_spec(self, name, path=None, target=None):\n"
        "        if name.split('.')[0] in ('torch', 'gymnasium', 'ray', 'tree'):\n"
        "            raise ImportError(name + ' may not be imported here')\n"
        "sys.meta_path.insert(0, Blocked())\n"
        "from rlfleet.envs.external import PolicyClient\n"
        "print(sorted(m for m in ('torch', 'gymnasium', 'ray') if m in sys.modules))\n"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "[]"


# --- the runner's fragments --------------------------------------------------------------------


def values_of(runner, *observations) -> list[float]:
    import torch

    return runner.module.compute_values(torch.from_numpy(np.stack(observations))).tolist()


def test_rewards_belong_to_the_last_action_and_truncation_bootstraps_from_the_final_observation(runner):
    o0, o1, o2 = (np.array(x, np.float32) for x in ([0.1, 0.2], [0.3, -0.4], [5.0, 5.0]))

    def simulate():
        with client(runner.port) as c:
            c.start_episode()
            c.get_action(o0)
            c.log_reward(1.0)
            c.log_reward(0.5)  # rewards add up on the last action
            c.get_action(o1)
            c.log_reward(2.0)
            c.end_episode(o2, truncated=True)

    thread = threading.Thread(target=simulate)
    thread.start()
    fragment = runner.sample()
    thread.join()
    b = fragment.batch
    np.testing.assert_array_equal(b["obs"][:, 0], [o0, o1])
    np.testing.assert_array_equal(b["rewards"][:, 0], [1.5, 2.0])
    np.testing.assert_array_equal(b["truncated"][:, 0], [False, True])
    np.testing.assert_array_equal(b["terminated"][:, 0], [False, False])
    np.testing.assert_array_equal(b["is_first"][:, 0], [True, False])
    v0, v1, v2 = values_of(runner, o0, o1, o2)
    np.testing.assert_allclose(b["values"][:, 0], [v0, v1], rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(b["next_values"][:, 0], [v1, v2], rtol=1e-5, atol=1e-6)  # V(final obs) at the truncation
    assert len(fragment.final_obs) == 1 and fragment.final_obs[0][:2] == (1, 0)
    np.testing.assert_array_equal(fragment.final_obs[0][2], o2)
    assert fragment.episode_returns == [3.5] and fragment.episode_lengths == [2]
    # GAE through the protocol, by hand: gamma 0.9, lambda 0.8
    adv, _ = compute_gae(b["rewards"], b["values"], b["next_values"], b["terminated"], b["truncated"],
                         gamma=0.9, lam=0.8)
    a1 = 2.0 + 0.9 * v2 - v1
    a0 = 1.5 + 0.9 * v1 - v0 + 0.9 * 0.8 * a1
    np.testing.assert_allclose(adv[:, 0], [a0, a1], rtol=1e-5, atol=1e-6)


def test_a_termination_has_no_future_and_the_next_episode_continues_the_column(runner):
    o = [np.array([0.1 * i, 0.0], np.float32) for i in range(4)]

    def simulate():
        with client(runner.port) as c:
            c.start_episode()
            c.get_action(o[0])
            c.log_reward(1.0)
            c.end_episode(o[1], terminated=True)
            c.start_episode()
            c.get_action(o[2])
            c.log_reward(3.0)
            c.get_action(o[3])

    thread = threading.Thread(target=simulate)
    thread.start()
    fragment = runner.sample()
    thread.join()
    b = fragment.batch
    np.testing.assert_array_equal(b["obs"][:, 0], [o[0], o[2]])
    np.testing.assert_array_equal(b["terminated"][:, 0], [True, False])
    np.testing.assert_array_equal(b["is_first"][:, 0], [True, True])
    assert b["next_values"][0, 0] == 0.0
    np.testing.assert_allclose(b["next_values"][1, 0], values_of(runner, o[3])[0], rtol=1e-5, atol=1e-6)
    np.testing.assert_array_equal(b["bootstrap_obs"][0, 0], o[3])
    assert fragment.episode_returns == [1.0]


def test_a_raw_socket_speaks_the_protocol_without_the_client_library(runner):
    sock = socket.create_connection(("127.0.0.1", runner.port), timeout=10)

    def send(message):
        body = msgpack.packb({"v": 1, **message}, use_bin_type=True)
        sock.sendall(struct.pack(">I", len(body)) + body)

    def receive():
        length = struct.unpack(">I", sock.recv(4, socket.MSG_WAITALL))[0]
        return msgpack.unpackb(sock.recv(length, socket.MSG_WAITALL), raw=False)

    obs = {"dtype": "float32", "shape": [2], "data": np.array([0.5, -0.5], np.float32).tobytes()}
    send({"type": "hello", "token": None, "name": "raw", **SCHEMAS})
    assert receive()["type"] == "welcome"
    send({"type": "start_episode"})
    assert receive() == {"v": 1, "type": "ok", "episode": 0}
    send({"type": "get_action", "obs": obs})
    reply = receive()
    assert reply["type"] == "action" and reply["action"] in (0, 1, 2) and reply["weights_version"] == 0
    send({"type": "log_reward", "reward": 1.0})
    send({"type": "get_action", "obs": obs})
    assert receive()["type"] == "action"
    send({"type": "end_episode", "obs": obs, "terminated": True, "truncated": False})
    assert receive()["type"] == "ok"
    fragment = runner.sample()
    assert fragment.episode_returns == [1.0] and fragment.batch["rewards"][:, 0].tolist() == [1.0, 0.0]
    send({"type": "bye"})
    sock.close()


# --- faults: an error reply and a closed connection, never a trainer crash -------------------------


def raw_exchange(port: int, frames: list[bytes], wait_s: float = 10.0) -> list[dict]:
    """Send ``frames``, read replies until the server closes the connection."""
    sock = socket.create_connection(("127.0.0.1", port), timeout=wait_s)
    for frame in frames:
        sock.sendall(frame)
    replies, data = [], b""
    while True:
        chunk = sock.recv(65536)
        if not chunk:
            break
        data += chunk
    while len(data) >= 4:
        n = struct.unpack(">I", data[:4])[0]
        replies.append(msgpack.unpackb(data[4:4 + n], raw=False))
        data = data[4 + n:]
    sock.close()
    return replies


def raw_frame(message: dict) -> bytes:
    body = msgpack.packb(message)
    return struct.pack(">I", len(body)) + body


def hello_frame(**extra) -> bytes:
    return pack({"type": "hello", "token": None, "name": "t", **SCHEMAS, **extra})


@pytest.mark.parametrize("frames,message", [
    ([struct.pack(">I", 5) + b"\xc1\xc1\xc1\xc1\xc1"], "frame is not msgpack"),
    ([raw_frame({"v": 9, "type": "hello"})], "protocol version 9, this server speaks 1"),
    ([pack({"type": "get_action"})], "the first message must be 'hello', got 'get_action'"),
    ([hello_frame(action_space={"type": "discrete", "n": 4, "start": 0})], "hello: action_space"),
    ([hello_frame(), pack({"type": "start_episode"}), pack({"type": "get_action", "obs": encode(np.array([99.0, 0.0], np.float32))})],
     "observation [99.  0.] is not in Box"),
    ([hello_frame(), pack({"type": "start_episode"}), pack({"type": "log_reward", "reward": 1.0})],
     "log_reward before the episode's first action"),
    ([hello_frame(), pack({"type": "teleport"})], "unknown message type 'teleport'"),
    ([struct.pack(">I", 64 << 20)], "frame of 67108864 bytes is over the limit"),
])
def test_a_broken_client_gets_an_error_and_is_disconnected_and_others_go_on(runner, frames, message):
    replies = raw_exchange(runner.port, frames)
    assert replies[-1]["type"] == "error" and message in replies[-1]["message"]
    with client(runner.port) as c:  # the runner still serves
        c.start_episode()
        assert c.get_action(np.zeros(2, np.float32)) in (0, 1, 2)


@pytest.mark.parametrize("runner", [{"env": {"token": "s3cret"}}], indirect=True)
def test_a_wrong_token_is_refused(runner):
    from rlfleet.envs.external import ExternalError

    with pytest.raises(ExternalError, match="wrong or missing token"):
        client(runner.port, token="guess")
    with client(runner.port, token="s3cret") as c:
        assert c.runner == runner.port


@pytest.mark.parametrize("runner", [{"env": {"hello_timeout_s": 0.5}}], indirect=True)
def test_a_client_that_never_speaks_is_closed_after_the_hello_timeout(runner):
    sock = socket.create_connection(("127.0.0.1", runner.port), timeout=10)
    started = time.monotonic()
    data = sock.recv(65536)
    assert time.monotonic() - started < 5
    reply = msgpack.unpackb(data[4:], raw=False)
    assert reply["type"] == "error" and "no hello within 0.5 s" in reply["message"]
    assert sock.recv(10) == b""


CLIENT_PROCESS = r"""
import sys, time, numpy as np
from rlfleet.envs.external import PolicyClient
port, n, mode = int(sys.argv[1]), int(sys.argv[2]), sys.argv[3]
schemas = {"observation_space": %r, "action_space": %r}
clients = [PolicyClient(port=port, **schemas) for _ in range(n)]
for c in clients:
    c.start_episode()
    c.get_action(np.zeros(2, np.float32))
print("ready", flush=True)
if mode == "hang":
    time.sleep(60)
""" % (SCHEMAS["observation_space"], SCHEMAS["action_space"])


@pytest.mark.parametrize("runner", [{"columns": 2, "length": 2}], indirect=True)
def test_a_killed_client_drops_its_episode_and_training_data_keeps_coming(runner):
    victim = subprocess.Popen([sys.executable, "-c", CLIENT_PROCESS, str(runner.port), "1", "hang"],
                              stdout=subprocess.PIPE, text=True)
    assert victim.stdout.readline().strip() == "ready"
    victim.send_signal(signal.SIGKILL)
    victim.wait()

    def simulate(seed):
        with client(runner.port) as c:
            for _ in range(3):
                c.start_episode()
                c.get_action(np.full(2, seed, np.float32))
                c.log_reward(1.0)
                c.end_episode(np.zeros(2, np.float32), terminated=True)

    threads = [threading.Thread(target=simulate, args=(s,)) for s in range(2)]
    for t in threads:
        t.start()
    fragment = runner.sample()
    for t in threads:
        t.join()
    assert fragment.num_env_errors == 1  # the killed client's episode, dropped and counted
    assert fragment.batch["rewards"].shape == (2, 2)


def test_64_connections_opened_at_once_from_four_processes_are_all_served(runner):
    procs = [subprocess.Popen([sys.executable, "-c", CLIENT_PROCESS, str(runner.port), "16", "done"],
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True) for _ in range(4)]
    outs = [p.communicate(timeout=120) for p in procs]
    assert all(p.returncode == 0 for p in procs), [o[1][-500:] for o in outs]
    assert all(o[0].strip() == "ready" for o in outs)


# --- client-side inference --------------------------------------------------------------------


def test_client_side_inference_samples_like_the_policy_and_reported_episodes_become_fragments(runner):
    import torch

    require_extra("export", "onnxruntime")
    with client(runner.port) as c:
        policy = c.fetch_policy(seed=0)
        assert policy.weights_version == 0
        observations = [np.array([0.1 * i, -0.2], np.float32) for i in range(3)]
        steps = []
        for obs in observations:
            action, step = policy.act(obs)
            assert action in (0, 1, 2) and step["action"] == action
            steps.append(step)
        # the client's log-probabilities are the policy's
        with torch.no_grad():
            dist, _ = runner.module.forward_train(torch.from_numpy(np.stack(observations)))
            logp = dist.logp([torch.tensor([s["action"] for s in steps])]).numpy()
        np.testing.assert_allclose([s["logp"] for s in steps], logp, rtol=1e-4, atol=1e-5)
        final = np.array([1.0, 1.0], np.float32)
        reply = c.report_episode(steps[:2], [1.0, 2.0], final, truncated=True)
        assert reply["accepted"] and reply["weights_version"] == 0
    fragment = runner.sample()
    b = fragment.batch
    np.testing.assert_array_equal(b["rewards"][:, 0], [1.0, 2.0])
    np.testing.assert_allclose(b["logp"][:, 0], [s["logp"] for s in steps[:2]], rtol=1e-6)
    v = values_of(runner, observations[0], observations[1], final)
    np.testing.assert_allclose(b["values"][:, 0], v[:2], rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(b["next_values"][:, 0], v[1:], rtol=1e-5, atol=1e-6)  # V(final) at the truncation
    assert b["truncated"][:, 0].tolist() == [False, True] and fragment.episode_returns == [3.0]


@pytest.mark.parametrize("runner", [{"env": {"max_lag": 2}}], indirect=True)
def test_reported_episodes_past_the_lag_limit_are_dropped_and_counted(runner):
    require_extra("export", "onnxruntime")
    with client(runner.port) as c:
        policy = c.fetch_policy()
        action, step = policy.act(np.zeros(2, np.float32))
        runner.set_weights({k: v.numpy() for k, v in runner.module.state_dict().items()}, 5)  # the learner moved on
        reply = c.report_episode([step], [1.0], np.zeros(2, np.float32), terminated=True)
        assert not reply["accepted"] and reply["weights_version"] == 5 and "policy lag 5 over 2" in reply["reason"]
        fresh = c.fetch_policy()
        assert fresh.weights_version == 5
        for _ in range(2):
            _, step = fresh.act(np.zeros(2, np.float32))
            assert c.report_episode([step], [1.0], np.zeros(2, np.float32), terminated=True)["accepted"]
    fragment = runner.sample()
    assert fragment.num_stale_episodes == 1 and fragment.weights_version == 5


@pytest.mark.parametrize("runner", [{"columns": 2, "length": 2, "env": {"max_lag": 2}}], indirect=True)
def test_an_episode_reported_in_parts_trains_each_fresh_part_and_counts_its_whole_return(runner):
    require_extra("export", "onnxruntime")
    obs = [np.array([0.1 * i, 0.0], np.float32) for i in range(6)]
    with client(runner.port) as c:
        old = c.fetch_policy(seed=1)
        first = [old.act(o)[1] for o in obs[:2]]
        assert c.report_episode(first, [1.0, 2.0], obs[2])["accepted"]  # neither flag: the episode goes on
        stale = [old.act(obs[2])[1]]
        runner.set_weights({k: v.numpy() for k, v in runner.module.state_dict().items()}, 5)
        reply = c.report_episode(stale, [3.0], obs[3])
        assert not reply["accepted"] and "policy lag 5 over 2" in reply["reason"]
        fresh = c.fetch_policy(seed=2)
        last = [fresh.act(o)[1] for o in obs[3:5]]
        assert c.report_episode(last, [4.0, 5.0], obs[5], terminated=True)["accepted"]
        with pytest.raises(Exception, match="at most one true"):
            c.report_episode(last, [4.0, 5.0], obs[5], terminated=True, truncated=True)
    fragment = runner.sample()
    b = fragment.batch
    np.testing.assert_array_equal(b["rewards"].T, [[1.0, 2.0], [4.0, 5.0]])
    # the first part ends like a truncation, bootstrapped from the observation it was reported with
    assert b["truncated"].T.tolist() == [[False, True], [False, False]]
    assert b["terminated"].T.tolist() == [[False, False], [False, True]]
    assert b["is_first"].T.tolist() == [[True, False], [True, False]]
    np.testing.assert_allclose(b["next_values"][1, 0], values_of(runner, obs[2])[0], rtol=1e-5, atol=1e-6)
    assert b["next_values"][1, 1] == 0.0
    assert [t for t, col, _ in fragment.final_obs] == [1]
    # the whole episode counts once, its stale part's reward included
    assert fragment.episode_returns == [15.0] and fragment.episode_lengths == [5]
    assert fragment.num_stale_episodes == 1


def test_a_q_network_is_fetched_epsilon_greedy_and_its_reports_of_any_lag_are_kept():
    import torch

    require_extra("export", "onnxruntime")
    from rlfleet.algorithms.dqn.module import QModuleSpec

    port = free_port()
    r = ExternalEnvRunner(module_spec=QModuleSpec(OBS, ACT), env_config={"port": port}, num_columns=1,
                          fragment_length=2, seed=0, index=0, sample_timeout_s=20.0, max_lag=None)
    try:
        weights = {k: v.numpy().copy() for k, v in r.module.state_dict().items()}
        r.set_weights({**weights, "epsilon": np.asarray(0.0, np.float32)}, 1)
        observations = [np.array([0.5 * i - 1.0, 0.3 * i], np.float32) for i in range(3)]
        with client(port) as c:
            greedy = c.fetch_policy(seed=0)
            assert greedy.kind == "epsilon_greedy" and greedy.epsilon == 0.0
            with torch.no_grad():
                expected = r.module.greedy_actions(torch.from_numpy(np.stack(observations)))[0].tolist()
            steps = [greedy.act(o)[1] for o in observations]
            assert [s["action"] for s in steps] == expected
            r.set_weights({**weights, "epsilon": np.asarray(1.0, np.float32)}, 9)  # 8 versions on: no limit
            assert c.report_episode(steps[:2], [1.0, 1.0], observations[2], terminated=True)["accepted"]
            explorer = c.fetch_policy(seed=0)
            assert explorer.epsilon == 1.0 and explorer.weights_version == 9
            picks = {explorer.act(observations[0])[0] for _ in range(60)}
            assert picks == {0, 1, 2}  # uniform over the 3 actions: all seen in 60 draws (p of missing one < 1e-10)
        fragment = r.sample()
        assert fragment.batch["actions"][0][:, 0].tolist() == expected[:2]
        assert "logp" not in fragment.batch and fragment.weights_version == 1 and fragment.num_stale_episodes == 0
    finally:
        r.stop()

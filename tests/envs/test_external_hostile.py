"""Hostile simulators (envs/external/server.py): malformed arrays, absurd shapes and peers
that never read their replies close their own connection, never the serving thread, and
well-behaved simulators keep being served meanwhile."""

from __future__ import annotations

import re
import socket
import threading
import time

import numpy as np
import pytest

from rlfleet.envs.external import ProtocolError
from rlfleet.envs.external import transport
from rlfleet.envs.external.protocol import decode, encode, pack
from tests.envs.test_external import client, hello_frame, raw_exchange, runner  # noqa: F401 - runner is a fixture

BAD_ARRAYS = [
    ({"dtype": "float32", "shape": [2], "data": b"\x00" * 7}, "array data of 7 bytes does not fill shape [2]"),
    ({"dtype": "float32", "shape": [2], "data": b"\x00" * 12}, "array data of 12 bytes does not fill shape [2]"),
    # the product wraps to 0 in int64: an empty buffer "fits" and numpy's reshape raised in the serving thread
    ({"dtype": "float32", "shape": [2**32, 2**32], "data": b""}, "array shape [4294967296, 4294967296] is not"),
    ({"dtype": "float32", "shape": [-1, 2], "data": b"\x00" * 8}, "array shape [-1, 2] is not"),
    ({"dtype": "complex128", "shape": [2], "data": b"\x00" * 32}, "array dtype 'complex128' is not one of"),
    ({"dtype": "float32", "shape": [True, 2], "data": b"\x00" * 8}, "array shape [True, 2] is not"),
]


@pytest.mark.parametrize("array,message", BAD_ARRAYS)
def test_decode_checks_sizes_before_numpy_sees_them(array, message):
    with pytest.raises(ProtocolError, match=re.escape(message)):
        decode(array)


def serve_one_client(port: int) -> None:
    """A well-behaved simulator is still served: hello, an episode, actions."""
    with client(port, timeout_s=10) as c:
        c.start_episode()
        for _ in range(3):
            assert c.get_action(np.zeros(2, np.float32)) in (0, 1, 2)
            c.log_reward(1.0)


@pytest.mark.parametrize("array,message", BAD_ARRAYS)
def test_a_malformed_array_closes_its_connection_only(runner, array, message):
    frames = [hello_frame(), pack({"type": "start_episode"}), pack({"type": "get_action", "obs": array})]
    replies = raw_exchange(runner.port, frames, wait_s=5)
    assert [r["type"] for r in replies] == ["welcome", "ok", "error"] and message in replies[-1]["message"]
    assert runner.server.refused_connections == 1
    serve_one_client(runner.port)


@pytest.mark.parametrize("runner", [{"env": {"token": "s3cret"}}], indirect=True)
def test_a_non_ascii_token_is_a_wrong_token(runner):
    replies = raw_exchange(runner.port, [hello_frame(token="sécret")], wait_s=5)
    assert replies[-1]["type"] == "error" and "wrong or missing token" in replies[-1]["message"]
    with client(runner.port, token="s3cret", timeout_s=10) as c:
        assert c.runner == runner.port


def test_a_hello_with_an_unreadable_space_is_refused(runner):
    space = {"type": "dict", "spaces": [1]}  # the schema reader raised AttributeError in the serving thread
    replies = raw_exchange(runner.port, [hello_frame(observation_space=space)], wait_s=5)
    assert replies[-1]["type"] == "error" and "hello" in replies[-1]["message"]  # refused by name, not a dead thread
    serve_one_client(runner.port)


@pytest.mark.parametrize("runner", [{"length": 1}], indirect=True)
def test_pipelined_messages_are_handled_in_order_after_the_action(runner):
    """get_action, log_reward and end_episode in one packet: the reward and the episode's
    end come after the action they belong to."""
    obs = encode(np.zeros(2, np.float32))
    frames = [hello_frame(), pack({"type": "start_episode"}), pack({"type": "get_action", "obs": obs}),
              pack({"type": "log_reward", "reward": 2.0}),
              pack({"type": "end_episode", "obs": obs, "terminated": True, "truncated": False}), pack({"type": "bye"})]
    replies = raw_exchange(runner.port, [b"".join(frames)], wait_s=5)
    assert [r["type"] for r in replies] == ["welcome", "ok", "action", "ok"]
    fragment = runner.sample()
    assert fragment.episode_returns == [2.0] and fragment.batch["rewards"][:, 0].tolist() == [2.0]
    assert fragment.batch["terminated"][:, 0].tolist() == [True]


def backed_up(server) -> bool:
    with server.lock:  # the serving thread adds and removes peers
        return any(p.outbox for p in server.peers.values())


def test_a_client_that_never_reads_is_dropped_and_others_are_served_meanwhile(runner, monkeypatch):
    monkeypatch.setattr(transport, "OUTBOX_LIMIT", 64 << 10)  # dropped after 64 KiB, not 4 MiB: a quick test
    silent = socket.socket()
    silent.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)  # before connect: the window it advertises
    silent.connect(("127.0.0.1", runner.port))
    silent.settimeout(30)
    obs = encode(np.zeros(2, np.float32))
    # episodes without actions: two replies and no forward pass each, so the kernel's buffers
    # (megabytes on loopback) fill in a second, not in the tens of seconds of one get_action a turn
    requests = (pack({"type": "start_episode"})
                + pack({"type": "end_episode", "obs": obs, "terminated": True, "truncated": False})) * 500
    silent.sendall(hello_frame())
    stop, dropped = threading.Event(), threading.Event()

    def flood():
        try:
            while not stop.is_set():
                silent.sendall(requests)
        except OSError:  # reset or broken pipe: the server dropped it
            dropped.set()

    flooder = threading.Thread(target=flood, daemon=True)
    flooder.start()
    try:
        deadline = time.monotonic() + 30
        while not backed_up(runner.server) and not dropped.is_set():
            assert time.monotonic() < deadline, "the silent client's replies never backed up"
            time.sleep(0.01)
        serve_one_client(runner.port)  # its replies back up, and the others are served
        assert dropped.wait(60), "the silent client was never dropped"
        assert runner.server.dropped_slow_readers == 1
        serve_one_client(runner.port)
    finally:
        stop.set()
        silent.close()
        flooder.join(timeout=10)

"""Servers started and stopped per test (one Serve instance per process at a time, so
these live apart from test_serve.py's module-wide server)."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import threading
import time

from tests.extras import require_extra

require_extra("serve", "ray.serve")

from tests.serving.conftest import train  # noqa: E402
from tests.serving.test_serve import REPO, Client, evaluate, ray_processes, start, wait_healthy  # noqa: E402


def test_pendulum_normalised_and_clipped_serves_like_in_process_and_stops_clean(checkpoints):
    checkpoint = checkpoints("ppo-pendulum")
    before = ray_processes()
    server, client = start(checkpoint)
    try:
        served = evaluate("--endpoint", f"http://127.0.0.1:{client.port}")
        status, one = client.act([1.0, 0.0, 0.0])
        assert status == 200 and -2.0 <= one["actions"][0] <= 2.0  # clipped to the Box
    finally:
        server.stop()
    local = evaluate("--checkpoint", checkpoint)
    assert served["returns"] == local["returns"]
    deadline = time.monotonic() + 15
    while ray_processes() - before and time.monotonic() < deadline:
        time.sleep(0.5)
    assert not ray_processes() - before


def test_reload_under_load_fails_no_request_and_shows_the_new_version(checkpoints, tmp_path):
    checkpoint = train("ppo-cartpole", tmp_path / "checkpoint", iterations=2)
    server, client = start(checkpoint)
    try:
        old = client.request("GET", "/metadata")[1]["weights_version"]
        statuses: list[int] = []
        stop = threading.Event()

        def hammer() -> None:
            while not stop.is_set():
                statuses.append(client.act([0.0, 0.1, 0.0, -0.1])[0])

        threads = [threading.Thread(target=hammer) for _ in range(4)]
        for t in threads:
            t.start()
        train("ppo-cartpole", tmp_path / "checkpoint", iterations=3)  # a newer checkpoint, same place
        status, answer = client.request("POST", "/reload")
        time.sleep(1.0)
        stop.set()
        for t in threads:
            t.join()
        assert status == 200 and answer["reloaded"] and answer["weights_version"] != old
        assert len(statuses) > 20 and set(statuses) == {200}
        assert client.request("GET", "/metadata")[1]["weights_version"] == answer["weights_version"]
    finally:
        server.stop()


def test_a_token_is_required_when_set_and_other_hosts_need_one(checkpoints):
    server, client = start(checkpoints("ppo-cartpole"), token="s3cret")
    try:
        anonymous = Client(client.port)
        status, answer = anonymous.request("GET", "/metadata")
        assert status == 401 and "Authorization: Bearer" in answer["error"]
        assert anonymous.request("GET", "/metadata", headers={"Authorization": "Bearer wrong"})[0] == 401
        assert client.request("GET", "/metadata")[0] == 200
    finally:
        server.stop()
    done = subprocess.run([sys.executable, os.path.join(REPO, "scripts", "serve.py"), "--checkpoint",
                           checkpoints("ppo-cartpole"), "--host", "0.0.0.0"], capture_output=True, text=True,
                          env={k: v for k, v in os.environ.items() if k != "RLFLEET_SERVE_TOKEN"})
    assert done.returncode == 2
    assert done.stderr.strip() == ("serve.py: error: --host 0.0.0.0 is reachable from other machines: give --token "
                                   "(or RLFLEET_SERVE_TOKEN)")


def test_an_lm_checkpoint_answers_complete_like_from_checkpoint_and_ctrl_c_stops_clean(tmp_path):
    import json
    import signal

    from rlfleet.algorithms.grpo import GRPO, GRPOConfig
    from tests.serving.test_serve import free_port

    algo = GRPOConfig(env="text-addition", env_config={"warmup_error_rate": 0.5}, seed=0, warmup_steps=20,
                      prompts_per_runner=4, group_size=4, minibatch_size=16, n_layer=1, n_head=2, n_embd=16).build()
    algo.train()
    algo.save(str(tmp_path / "checkpoint"))
    algo.stop()
    local = GRPO.from_checkpoint(str(tmp_path / "checkpoint"))
    expected = local.complete(["12+7=", "3+4="])
    local.stop()
    before = ray_processes()
    port = free_port()
    proc = subprocess.Popen([sys.executable, os.path.join(REPO, "scripts", "serve.py"), "--checkpoint",
                             str(tmp_path / "checkpoint"), "--port", str(port)],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        client = Client(port)
        wait_healthy(client, proc)
        status, answer = client.request("POST", "/complete", json.dumps({"prompts": ["12+7=", "3+4="]}))
        assert status == 200 and answer["completions"] == expected
        status, answer = client.request("POST", "/complete", json.dumps({"prompt": "12+7="}))
        assert status == 200 and answer["completion"] == expected[0]
        status, answer = client.request("POST", "/complete", json.dumps({"prompts": "12+7="}))
        assert status == 400 and "prompts must be a non-empty list of strings" in answer["error"]
        status, answer = client.request("POST", "/act", json.dumps({"obs": [1]}))
        assert status == 400 and "serves a language model: POST /complete" in answer["error"]
        assert client.request("GET", "/metadata")[1]["algorithm"] == "grpo"
    finally:
        proc.send_signal(signal.SIGINT)
        out, err = proc.communicate(timeout=60)
    assert proc.returncode == 0, err
    assert "server stopped" in out
    deadline = time.monotonic() + 15
    while ray_processes() - before and time.monotonic() < deadline:
        time.sleep(0.5)
    assert not ray_processes() - before


def test_a_reload_reaching_one_replica_reaches_all_and_watch_follows_the_file(tmp_path):
    checkpoint = train("ppo-cartpole", tmp_path / "checkpoint", iterations=1)
    server, client = start(checkpoint, num_replicas=2, num_cpus_per_replica=0.5, watch=True)
    try:
        old = client.request("GET", "/metadata")[1]["weights_version"]
        assert {client.act([0.0, 0.0, 0.0, 0.0])[1]["weights_version"] for _ in range(20)} == {old}
        train("ppo-cartpole", tmp_path / "checkpoint", iterations=2)  # a newer checkpoint: --watch follows it
        time.sleep(2.5)
        versions = {client.act([0.0, 0.0, 0.0, 0.0])[1]["weights_version"] for _ in range(30)}
        time.sleep(1.5)
        watched = {client.act([0.0, 0.0, 0.0, 0.0])[1]["weights_version"] for _ in range(30)}
        assert watched == {old + 1} and old + 1 in versions
    finally:
        server.stop()
    # Without --watch, one POST /reload (answered by one replica) switches both.
    checkpoint2 = train("ppo-cartpole", tmp_path / "other", iterations=1)
    server, client = start(checkpoint2, num_replicas=2, num_cpus_per_replica=0.5)
    try:
        old = client.request("GET", "/metadata")[1]["weights_version"]
        train("ppo-cartpole", tmp_path / "other", iterations=3)
        assert {client.act([0.0, 0.0, 0.0, 0.0])[1]["weights_version"] for _ in range(20)} == {old}
        status, answer = client.request("POST", "/reload")
        assert status == 200 and answer["weights_version"] == old + 2
        time.sleep(1.5)
        assert {client.act([0.0, 0.0, 0.0, 0.0])[1]["weights_version"] for _ in range(40)} == {old + 2}
    finally:
        server.stop()


def test_watch_keeps_answering_while_a_new_checkpoint_is_half_written_then_serves_it(tmp_path):
    """A checkpoint copied in place (or its directory swapped) is seen half-written, or not at
    all, by a poll: valid requests still get 200 from the loaded weights, and the new ones
    are served once the file is complete."""
    newer = train("ppo-cartpole", tmp_path / "newer", iterations=2)
    with open(os.path.join(newer, "model.safetensors"), "rb") as f:
        new = f.read()
    checkpoint = train("ppo-cartpole", tmp_path / "checkpoint", iterations=1)
    file = os.path.join(checkpoint, "model.safetensors")
    server, client = start(checkpoint, watch=True)
    try:
        old = client.request("GET", "/metadata")[1]["weights_version"]

        def answers(seconds: float) -> list[tuple[int, int | None]]:
            out, deadline = [], time.monotonic() + seconds
            while time.monotonic() < deadline:
                status, answer = client.act([0.0, 0.1, 0.0, -0.1])
                out.append((status, answer.get("weights_version")))
            return out

        with open(file, "wb") as f:  # a copy in place, caught halfway for 2.5 s (2 polls or more)
            f.write(new[: len(new) // 2])
        assert set(answers(2.5)) == {(200, old)}
        os.unlink(file)  # a directory swapped for a new one: the file missing for a moment
        assert set(answers(1.5)) == {(200, old)}
        for name in ("trainer.pt", "model.safetensors", "state.json"):  # the copy completes, file by file
            shutil.copy(os.path.join(newer, name), os.path.join(checkpoint, name))
        served = answers(2.5)
        assert {status for status, _ in served} == {200} and served[-1][1] == old + 1
    finally:
        server.stop()


def test_a_port_taken_after_the_check_is_one_error_naming_it_and_ray_is_shut_down(checkpoints, monkeypatch):
    import socket

    import pytest
    import ray

    from rlfleet.runtime import serving
    from rlfleet.runtime.serving import PortUnavailableError, ServeOptions, Server
    from rlfleet.scripts.tools.serving import PolicyService

    checkpoint = checkpoints("ppo-cartpole")
    before = ray_processes()
    monkeypatch.setattr(serving, "check_bindable", lambda host, port: None)  # as if taken between check and bind
    with socket.socket() as holder:
        holder.bind(("127.0.0.1", 0))
        holder.listen()
        port = holder.getsockname()[1]
        with pytest.raises(PortUnavailableError) as e:
            Server(lambda: PolicyService(checkpoint), ServeOptions(port=port), address=None)
    assert str(e.value).startswith(f"port {port} on 127.0.0.1 is already in use") and "\n" not in str(e.value)
    assert not ray.is_initialized()
    deadline = time.monotonic() + 15
    while ray_processes() - before and time.monotonic() < deadline:
        time.sleep(0.5)
    assert not ray_processes() - before

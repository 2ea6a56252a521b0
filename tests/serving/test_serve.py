"""Serving on Ray Serve: a served checkpoint acts as the library does (evaluate.py over
HTTP and in-process give the same per-episode returns), bad requests get 400 with one
line and leave the server up, a reload under load fails no request, tokens are enforced,
and stopping leaves no Ray process behind."""

from __future__ import annotations

import http.client
import json
import os
import random
import socket
import subprocess
import sys
import time

import numpy as np
import pytest

from tests.extras import require_extra

require_extra("serve", "ray.serve")

from rlfleet.scripts.tools.serving import PolicyService  # noqa: E402
from rlfleet.runtime.serving import ServeOptions, Server  # noqa: E402

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def free_port() -> int:
    """A free port below the kernel's ephemeral range (32768 up, which Ray's own services
    draw from as Serve starts) and above Ray's worker ports (10002-19999): a port the OS
    hands out for port 0 was once taken by a Ray process between this pick and the proxy's
    bind, and the test failed with 'port taken while Serve started'."""
    rng = random.Random()
    while True:
        port = rng.randrange(20_000, 32_768)
        with socket.socket() as s:
            try:
                s.bind(("127.0.0.1", port))
            except OSError:
                continue
            return port


def ray_processes() -> set[int]:
    out = subprocess.run(["pgrep", "-f", "ray::|raylet|gcs_server|dashboard/agent.py|runtime_env/agent"],
                         capture_output=True, text=True).stdout
    return {int(pid) for pid in out.split()}


class Client:
    def __init__(self, port: int, token: str | None = None) -> None:
        self.port, self.token = port, token

    def request(self, method: str, path: str, body: bytes | str | None = None,
                headers: dict | None = None) -> tuple[int, dict]:
        conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=60)
        all_headers = {"Content-Type": "application/json", **(headers or {})}
        if self.token:
            all_headers["Authorization"] = f"Bearer {self.token}"
        conn.request(method, path, body, all_headers)
        response = conn.getresponse()
        status, data = response.status, response.read()
        conn.close()
        try:
            return status, json.loads(data)
        except json.JSONDecodeError:  # Serve's proxy before the app is up answers in text
            return status, {"error": data.decode(errors="replace")}

    def act(self, obs, **extra) -> tuple[int, dict]:
        return self.request("POST", "/act", json.dumps({"obs": obs, **extra}))


def wait_healthy(client: Client, proc: subprocess.Popen, timeout_s: float = 120.0) -> None:
    """Until the server started as ``proc`` (serve.py) answers /healthz."""
    deadline = time.monotonic() + timeout_s
    while True:
        try:
            if client.request("GET", "/healthz")[0] == 200:
                return
        except OSError:
            pass
        assert proc.poll() is None, proc.stderr.read()
        assert time.monotonic() < deadline, "the server did not come up"
        time.sleep(0.3)


def start(checkpoint: str, **options) -> tuple[Server, Client]:
    for attempt in range(3):
        # a port free when probed may be taken before Serve binds it (another process on
        # this shared machine): then another port, not a failed test
        port = free_port()
        opts = ServeOptions(port=port, **options)
        try:
            server = Server(lambda: PolicyService(checkpoint, max_batch_rows=opts.max_batch_rows), opts, address=None)
            break
        except Exception as e:
            if attempt == 2 or not ("already in use" in str(e) or "Failed to bind" in str(e)):
                raise
    client = Client(port, options.get("token"))
    deadline = time.monotonic() + 60
    while True:
        try:
            if client.request("GET", "/healthz")[0] == 200:
                return server, client
        except OSError:
            pass
        if time.monotonic() > deadline:
            server.stop()
            raise TimeoutError("server did not come up")
        time.sleep(0.2)


def evaluate(*source: str, env: str | None = None) -> dict:
    args = [sys.executable, os.path.join(REPO, "scripts", "evaluate.py"), *source, "--episodes", "4", "--seed", "7",
            "--json"] + (["--env", env] if env else [])
    done = subprocess.run(args, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    return json.loads(done.stdout)


@pytest.fixture(scope="module")
def cartpole_server(checkpoints):
    before = ray_processes()
    server, client = start(checkpoints("ppo-cartpole"), max_batch_rows=64, max_body_bytes=20_000)
    yield checkpoints("ppo-cartpole"), client
    server.stop()
    deadline = time.monotonic() + 15
    while ray_processes() - before and time.monotonic() < deadline:
        time.sleep(0.5)
    assert not ray_processes() - before, "Ray processes outlived server.stop()"


def test_metadata_and_actions(cartpole_server):
    checkpoint, client = cartpole_server
    status, meta = client.request("GET", "/metadata")
    assert status == 200
    assert meta["algorithm"] == "ppo" and meta["env"] == "CartPole-v1" and meta["checkpoint"].startswith(checkpoint)
    assert meta["observation_space"]["shape"] == [4] and meta["action_space"] == {"type": "discrete", "n": 2, "start": 0}
    status, one = client.act([0.01, 0.02, -0.03, 0.04])
    assert status == 200 and one["actions"] in (0, 1) and one["weights_version"] == meta["weights_version"]
    status, many = client.act([[0.01, 0.02, -0.03, 0.04]] * 3, details=True)
    assert status == 200 and many["actions"] == [one["actions"]] * 3
    assert np.allclose(np.sum(many["action_probs"], -1), 1.0) and len(many["value"]) == 3


@pytest.mark.parametrize("body,message", [
    ('{"obs": [0.1, 0.2, 0.3]}', "observation: shape (3,), expected (4,) (one observation) or (N, 4) (a batch)"),
    ('{"obs": [[0.1, 0.2], [0.3]]}', "observation: ragged nesting of lists"),
    ('{"obs": {"x": [0.1, 0.2, 0.3, 0.4]}}', """observation: an object leaf must be {"b64": ..."""),
    ('{"obs": [[0.1, 0.2, 0.3, {"x": 1}]]}', "observation: expected numbers, got dict, float"),
    ('{"obs": [NaN, 0.2, 0.3, 0.4]}', "observation: holds NaN or infinity"),
    ('{"obs": [0.1, "a", 0.3, 0.4]}', "observation: expected numbers, got float, str"),
    ('{"obs": [0.1, 0.2, 0.3, 0.4], "explore": "yes"}', "'explore' must be true or false, got 'yes'"),
    ('{"obz": [0.1, 0.2, 0.3, 0.4]}', "unknown key 'obz'; did you mean 'obs'?"),
    ('[1, 2]', "body must be a JSON object"),
    ('{"obs": ', "body is not valid JSON"),
    (json.dumps({"obs": [[0.0] * 4] * 65}), "batch of 65 observations is over the limit of 64"),
    (json.dumps({"obs": [[0.0] * 4] * 1200}), "bytes is over the limit of 20000"),
    ('{"obs": [9.9, 0.0, 0.0, 0.0]}', "observation: values outside Box"),
    # hostile bodies: a nesting that exhausts json's recursion, or one past any observation's
    ('{"obs": ' + "[" * 5000 + "]" * 5000 + "}", "body nests deeper than 100 levels"),
    ('{"obs": ' + "[" * 150 + "0.0" + "]" * 150 + "}", "body nests deeper than 100 levels"),
    ('{"obs": [1' + "0" * 5000 + ', 0, 0, 0]}', "body is not valid JSON"),
    # a b64 leaf whose declared shape overflows numpy's arithmetic or cannot be reshaped to
    (json.dumps({"obs": {"b64": "", "dtype": "float32", "shape": [2**32, 2**32]}}),
     "observation: shape (4294967296, 4294967296), expected (4,) (one observation) or (N, 4) (a batch)"),
    (json.dumps({"obs": {"b64": "", "dtype": "float32", "shape": [2**62, 4]}}),
     "observation: 0 bytes do not fill shape (4611686018427387904, 4) of float32"),
    (json.dumps({"obs": {"b64": "AAAAAAAAAAAAAAAAAAAAAA==", "dtype": "float32", "shape": [-1, -4]}}),
     "observation: b64 shape must be a list of non-negative integers, got [-1, -4]"),
    (json.dumps({"obs": {"b64": "AAAAAAAAAAAAAAAAAAAAAA==", "dtype": "float32", "shape": [1] * 70 + [4]}}),
     "observation: shape (1, 1, 1,"),
])
def test_a_bad_request_gets_400_with_one_line_and_the_server_stays_up(cartpole_server, body, message):
    _, client = cartpole_server
    status, answer = client.request("POST", "/act", body)
    assert status == 400
    assert message in answer["error"] and "\n" not in answer["error"]
    assert client.act([0.0, 0.0, 0.0, 0.0])[0] == 200


def test_unknown_routes_and_methods(cartpole_server):
    _, client = cartpole_server
    status, answer = client.request("GET", "/predict")
    assert status == 404 and "routes: GET /healthz" in answer["error"]
    assert client.request("GET", "/act")[0] == 405
    status, answer = client.request("POST", "/complete", '{"prompts": ["1+1="]}')
    assert status == 400 and "serves a control policy: POST /act" in answer["error"]


def test_served_and_in_process_evaluation_give_the_same_returns(cartpole_server):
    checkpoint, client = cartpole_server
    served = evaluate("--endpoint", f"http://127.0.0.1:{client.port}")
    local = evaluate("--checkpoint", checkpoint)
    assert served["returns"] == local["returns"] and served["episodes"] == 4
    assert served["requests"] == local["requests"] == sum(int(r) for r in local["returns"])  # CartPole: 1 a step
    assert served["latency_ms_p50"] > 0 and served["latency_ms_p99"] >= served["latency_ms_p50"]


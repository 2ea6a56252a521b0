"""serve.py --address joins a running Ray cluster (started here with ``ray start``),
serves, and on Ctrl-C removes its own application only: the cluster stays up.

Marked ``cluster`` (it starts and stops a cluster with ``ray start``/``ray stop``); CI runs
it with ``pytest -m cluster``."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys

import pytest

from tests.extras import require_extra
from tests.ray_cli import RAY

require_extra("serve", "ray.serve")

from tests.serving.test_serve import REPO, Client, free_port, wait_healthy  # noqa: E402

ENV = {**os.environ, "RAY_AUTH_MODE": "token"}  # every process that joins carries the token


def ray_cli(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([*RAY, *args], capture_output=True, text=True, env=ENV, timeout=120)


@pytest.mark.cluster
def test_serve_joins_a_running_cluster_and_removes_only_its_app(checkpoints):
    checkpoint = checkpoints("ppo-cartpole")
    gcs_port, http_port = free_port(), free_port()
    ray_cli("stop", "--force")
    started = ray_cli("start", "--head", f"--port={gcs_port}", "--num-cpus=2", "--disable-usage-stats",
                      "--include-dashboard=false")
    assert started.returncode == 0, started.stderr
    address = f"127.0.0.1:{gcs_port}"
    try:
        proc = subprocess.Popen([sys.executable, os.path.join(REPO, "scripts", "serve.py"), "--checkpoint", checkpoint,
                                 "--address", address, "--port", str(http_port)],
                                stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=ENV)
        client = Client(http_port)
        wait_healthy(client, proc)
        status, answer = client.act([0.0, 0.0, 0.0, 0.0])
        assert status == 200 and answer["actions"] in (0, 1)
        proc.send_signal(signal.SIGINT)
        out, err = proc.communicate(timeout=120)
        assert proc.returncode == 0, err
        # The cluster is still there, and our application is gone from it.
        probe = subprocess.run([sys.executable, "-c", (
            "import json, ray\n"
            f"ray.init(address={address!r}, logging_level='ERROR')\n"
            "from ray import serve\n"
            "print(json.dumps(sorted(serve.status().applications)))\n")],
            capture_output=True, text=True, env=ENV, timeout=120)
        assert probe.returncode == 0, probe.stderr
        assert "rlfleet" not in json.loads(probe.stdout.strip().splitlines()[-1])
    finally:
        ray_cli("stop", "--force")

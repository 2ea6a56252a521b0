"""A served LSTM policy evaluated through the endpoint by 4 clients side by side, each with
its own session: every episode's return equals the in-process evaluation's. Its own module:
one Serve application at a time per Ray instance."""

from __future__ import annotations

import json
import os
import subprocess
import sys

from tests.extras import require_extra

require_extra("serve", "ray.serve")

from tests.serving.test_serve import REPO, start  # noqa: E402


def evaluate(*source: str) -> dict:
    done = subprocess.run([sys.executable, os.path.join(REPO, "scripts", "evaluate.py"), *source, "--episodes", "8",
                           "--seed", "5", "--json"], capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    return json.loads(done.stdout)


def test_four_sessions_through_the_endpoint_play_the_checkpoints_episodes(checkpoints):
    checkpoint = checkpoints("ppo-lstm-maze")
    server, client = start(checkpoint)
    try:
        status, meta = client.request("GET", "/metadata")
        served = evaluate("--endpoint", f"http://127.0.0.1:{client.port}", "--sessions", "4")
    finally:
        server.stop()
    assert status == 200 and meta["memory"] == {"kind": "lstm", "state_size": 32}, meta
    local = evaluate("--checkpoint", checkpoint)
    assert served["returns"] == local["returns"] and served["episodes"] == 8
    assert len(set(served["returns"])) > 1  # episodes that differ: the comparison means something

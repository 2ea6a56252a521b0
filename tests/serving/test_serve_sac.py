"""A served SAC checkpoint (a module with no capabilities but acting: a squashed Gaussian,
served greedily) plays the checkpoint's episodes. Its own module: one Serve application at
a time per Ray instance, and test_serve.py keeps its CartPole server up for its whole module."""

from __future__ import annotations

import numpy as np

from tests.extras import require_extra

require_extra("serve", "ray.serve")

from tests.serving.test_serve import evaluate, start  # noqa: E402


def test_a_served_sac_policy_plays_the_checkpoints_episodes(checkpoints):
    checkpoint = checkpoints("sac-pendulum")
    server, client = start(checkpoint)
    try:
        status, meta = client.request("GET", "/metadata")
        served = evaluate("--endpoint", f"http://127.0.0.1:{client.port}")
    finally:
        server.stop()
    assert status == 200 and meta["algorithm"] == "sac", meta
    local = evaluate("--checkpoint", checkpoint)
    np.testing.assert_allclose(served["returns"], local["returns"], rtol=1e-5)

"""A Ray cluster already running on this machine (``ray start``) is joined only when asked
for (``--address``, or ``RAY_ADDRESS`` as ``ray job submit`` sets it); without that, a run
starts its own embedded instance. Ray's ``ray.init()`` would otherwise find the running
cluster by itself and refuse the CPU count the run asks for, in a traceback (issue 30).

Marked ``cluster``: it starts and stops a Ray head node with ``ray start``/``ray stop``."""

from __future__ import annotations

import json
import os
import pathlib
import subprocess
import sys

import pytest

from tests.ray_cli import RAY

REPO = pathlib.Path(__file__).resolve().parents[2]
PORT = 6392
TINY = ["--algo", "ppo", "--env", "CartPole-v1", "--num-env-runners", "2", "--stop-timesteps", "128", "--quiet",
        "--set", "num_envs_per_runner=2", "--set", "rollout_fragment_length=16", "--set", "minibatch_size=32",
        "--defaults"]


@pytest.fixture
def head_node():
    env = {**os.environ, "RAY_AUTH_MODE": "token"}
    subprocess.run([*RAY, "stop", "--force"], capture_output=True, env=env, timeout=120)
    subprocess.run([*RAY, "start", "--head", f"--port={PORT}", "--num-cpus=1", "--disable-usage-stats",
                    "--include-dashboard=false"], check=True, capture_output=True, env=env, timeout=180)
    try:
        yield env
    finally:
        subprocess.run([*RAY, "stop", "--force"], capture_output=True, env=env, timeout=120)


def train(logdir, env):
    return subprocess.run([sys.executable, str(REPO / "scripts" / "train.py"), *TINY, "--logdir", str(logdir)],
                          cwd=REPO, capture_output=True, text=True, timeout=300, env=env)


@pytest.mark.cluster
def test_a_run_starts_its_own_instance_beside_a_running_cluster_and_joins_it_through_ray_address(head_node, tmp_path):
    # the running head has 1 CPU: 2 runners fit only in the run's own instance
    alone = train(tmp_path / "own", head_node)
    assert alone.returncode == 0, alone.stdout + alone.stderr[-3000:]
    rows = [json.loads(line) for line in (tmp_path / "own" / "progress.jsonl").read_text().splitlines()]
    assert rows[-1]["env_steps"] >= 128
    # RAY_ADDRESS names the cluster to join (as `ray job submit` sets it), and the run says so
    joined = subprocess.run(
        [sys.executable, str(REPO / "scripts" / "train.py"), *TINY[:4], "--num-env-runners", "1", *TINY[6:],
         "--logdir", str(tmp_path / "joined")],
        cwd=REPO, capture_output=True, text=True, timeout=300, env={**head_node, "RAY_ADDRESS": f"127.0.0.1:{PORT}"})
    assert joined.returncode == 0, joined.stdout + joined.stderr[-3000:]
    assert f"rlfleet: joining the Ray cluster at 127.0.0.1:{PORT} (RAY_ADDRESS)" in joined.stderr

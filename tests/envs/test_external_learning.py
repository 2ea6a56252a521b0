"""CartPole trained entirely by simulators in other processes that own their loop and
ask the runner for actions (envs/external/example.py): 4 processes x 2 connections."""

from __future__ import annotations

import socket
import subprocess
import sys
import time

import pytest

from rlfleet.algorithms.ppo import PPOConfig
from rlfleet.scripts.tools.experiment import load_experiment
from rlfleet.tuned_examples import __file__ as examples_init
from tests.extras import require_extra


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def train_external(seed: int, processes: int = 4, connections: int = 2, max_steps: int = 200_000,
                   local: bool = False) -> dict:
    import os

    exp = load_experiment(os.path.join(os.path.dirname(examples_init), "ppo", "CartPole-v1.yaml"))
    port = free_port()
    config = PPOConfig.from_dict({**exp.config, "env": "external", "seed": seed,
                                  "env_config": {"spaces_from": "CartPole-v1", "port": port}}, source="test")
    algo = config.build()
    clients = [subprocess.Popen([sys.executable, "-m", "rlfleet.envs.external.example", "--port", str(port),
                                 "--connections", str(connections), "--seed", str(1000 * seed + 10 * i)]
                                + ["--local"] * local)
               for i in range(processes)]
    started = time.perf_counter()
    try:
        while True:
            result = algo.train()
            if exp.stop.reached(result) or result["env_steps"] >= max_steps:
                return {**result, "wall_s": time.perf_counter() - started}
    finally:
        algo.stop()
        for c in clients:
            c.wait(timeout=60)


@pytest.mark.learning
@pytest.mark.parametrize("seed", [0, 1, 2])
def test_cartpole_trained_by_external_processes_reaches_475(seed):
    result = train_external(seed)
    print(f"seed {seed}: return {result['episode_return_mean']:.1f} at {result['env_steps']} env steps, "
          f"{result['wall_s']:.1f} s, policy lag {result['policy_lag_mean']:.2f}, dropped {result['num_env_errors']}")
    assert result["episode_return_mean"] >= 475 and result["episode_window_full"]
    assert result["env_steps"] <= 150_000  # the tuned example's pass bound for in-process envs


@pytest.mark.learning
@pytest.mark.parametrize("seed", [0, 1, 2])
def test_cartpole_trained_with_client_side_inference_reaches_475(seed):
    require_extra("export", "onnxruntime")
    result = train_external(seed, local=True, max_steps=250_000)
    print(f"seed {seed}: return {result['episode_return_mean']:.1f} at {result['env_steps']} env steps, "
          f"{result['wall_s']:.1f} s, policy lag {result['policy_lag_mean']:.2f}, "
          f"stale {result['num_stale_episodes']}")
    assert result["episode_return_mean"] >= 475 and result["episode_window_full"]

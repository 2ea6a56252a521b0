"""Serving benchmark (``python scripts/bench.py serve``): latency and throughput of a
served policy over loopback, next to a bare in-process forward of the same module and a
minimal Ray Serve deployment, all measured in the same run.

For the CartPole MLP and for a policy whose forward dominates (the Nature CNN on 84x84x4
uint8 frames): p50/p99 latency of single-observation requests from one client, and
actions/s with 1, 16 and 64 concurrent clients (one observation per request, kept-alive
connections), with Serve's dynamic batching and without.
"""

from __future__ import annotations

import http.client
import json
import os
import socket
import statistics
import sys
import tempfile
import threading
import time
from typing import Any

import numpy as np


def _port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def make_checkpoints(root: str) -> dict[str, str]:
    """A CartPole MLP (a few iterations of training) and an untrained CNN policy on
    84x84x4 uint8 frames: latency does not depend on how good the weights are."""
    from rlfleet.algorithms.ppo import PPOConfig
    from rlfleet.envs.testing import ImageEnv

    out = {}
    for name, config, iterations in (
        ("cartpole-mlp", PPOConfig(env="CartPole-v1", num_envs_per_runner=8, rollout_fragment_length=32), 3),
        ("atari-cnn", PPOConfig(env=ImageEnv, env_config={"size": 84, "channels": 4}, num_envs_per_runner=2,
                                rollout_fragment_length=8, minibatch_size=16, num_epochs=1), 1),
    ):
        algo = config.build()
        for _ in range(iterations):
            algo.train()
        out[name] = algo.save(os.path.join(root, name))
        algo.stop()
    return out


class Load:
    """``clients`` threads, each on its own kept-alive connection, posting one observation
    per request for ``seconds``; returns requests/s and per-request latencies."""

    def __init__(self, port: int, body: bytes, path: str = "/act") -> None:
        self.port, self.body, self.path = port, body, path

    def run(self, clients: int, seconds: float) -> dict[str, Any]:
        latencies: list[list[float]] = [[] for _ in range(clients)]
        failures = [0]
        stop = time.monotonic() + seconds

        def client(i: int) -> None:
            conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=60)
            while time.monotonic() < stop:
                started = time.perf_counter()
                conn.request("POST", self.path, self.body, {"Content-Type": "application/json"})
                response = conn.getresponse()
                response.read()
                if response.status != 200:
                    failures[0] += 1
                latencies[i].append(time.perf_counter() - started)
            conn.close()

        threads = [threading.Thread(target=client, args=(i,)) for i in range(clients)]
        started = time.monotonic()
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        elapsed = time.monotonic() - started
        flat = np.asarray([x for xs in latencies for x in xs]) * 1000
        return {"per_s": len(flat) / elapsed, "p50_ms": float(np.percentile(flat, 50)),
                "p99_ms": float(np.percentile(flat, 99)), "requests": len(flat), "failures": failures[0]}


def bare_forward(checkpoint: str, obs: np.ndarray, seconds: float) -> dict[str, float]:
    """Policy.act in this process at batch 1 and batch 64: the floor any server adds to."""
    from rlfleet.rl.inference import Policy

    policy = Policy.load(checkpoint)
    out = {}
    for batch in (1, 64):
        x = np.repeat(obs[None], batch, 0)
        n, started = 0, time.perf_counter()
        times = []
        while time.perf_counter() - started < seconds:
            t = time.perf_counter()
            policy.act(x)
            times.append(time.perf_counter() - t)
            n += 1
        out[f"batch{batch}_actions_per_s"] = n * batch / (time.perf_counter() - started)
        out[f"batch{batch}_p50_ms"] = statistics.median(times) * 1000
    return out


def main(args: Any) -> None:
    import ray
    from ray import serve

    from rlfleet.scripts.tools.serving import PolicyService
    from rlfleet.runtime.serving import ServeOptions, Server

    root = tempfile.mkdtemp(prefix="bench_serve_")
    checkpoints = make_checkpoints(root)
    report: dict[str, Any] = {"cpus": os.cpu_count(), "seconds_per_point": args.seconds}
    for name, checkpoint in checkpoints.items():
        from rlfleet.rl.inference import Policy

        space = Policy.load(checkpoint).observation_space
        obs = space.sample() if space.dtype == np.uint8 else np.zeros(space.shape, space.dtype)
        if space.dtype == np.uint8:  # frames as raw bytes: 84x84x4 JSON numbers would dominate every request
            import base64

            leaf = {"b64": base64.b64encode(obs.tobytes()).decode(), "dtype": "uint8", "shape": list(obs.shape)}
        else:
            leaf = obs.tolist()
        body = json.dumps({"obs": leaf}).encode()
        report[name] = {"bare": bare_forward(checkpoint, obs, args.seconds), "body_bytes": len(body)}
        if name == "atari-cnn":
            cnn_body = body
        print(f"{name}: bare forward {report[name]['bare']}", flush=True)
        for batching in (True, False):
            port = _port()
            options = ServeOptions(port=port, batching=batching, max_batch_rows=64)
            server = Server(lambda c=checkpoint: PolicyService(c, max_batch_rows=64), options, address=None)
            load = Load(port, body)
            _wait(port)
            load.run(4, 1.0)  # warm-up
            key = "batched" if batching else "unbatched"
            report[name][key] = {clients: load.run(clients, args.seconds) for clients in (1, 16, 64)}
            server.stop()
            for clients, r in report[name][key].items():
                print(f"{name} {key:9s} {clients:2d} clients: {r['per_s']:8.1f} actions/s, p50 {r['p50_ms']:7.2f} ms, "
                      f"p99 {r['p99_ms']:7.2f} ms ({r['failures']} failures)", flush=True)
    # A minimal Ray Serve deployment in the same run: the floor of a Serve round trip.
    port = _port()
    ray.init(num_cpus=2, include_dashboard=False, logging_level="WARNING")
    serve.start(http_options={"host": "127.0.0.1", "port": port},
                logging_config={"log_level": "WARNING", "enable_access_log": False})

    @serve.deployment(max_ongoing_requests=128)  # as ours with max_batch_rows 64: requests are not turned away
    class Minimal:
        async def __call__(self, request: Any) -> dict:
            await request.body()
            return {"actions": 0}

    serve.run(Minimal.bind(), name="minimal", route_prefix="/", logging_config={"log_level": "WARNING",
                                                                               "enable_access_log": False})
    _wait(port, "/")
    load = Load(port, json.dumps({"obs": [0.0, 0.0, 0.0, 0.0]}).encode(), "/")
    load.run(1, 1.0)
    report["minimal_serve"] = {1: load.run(1, args.seconds)}
    # Serve's own ceiling with the CNN's request body: no batching can beat it, so
    # batched / unbatched is at most this over the unbatched CNN figure.
    load = Load(port, cnn_body, "/")
    report["minimal_serve_cnn_body"] = {clients: load.run(clients, args.seconds) for clients in (1, 16, 64)}
    serve.shutdown()
    ray.shutdown()
    r = report["minimal_serve"][1]
    print(f"minimal Serve deployment, 1 client: {r['per_s']:.1f} requests/s, p50 {r['p50_ms']:.2f} ms, "
          f"p99 {r['p99_ms']:.2f} ms", flush=True)
    for clients, m in report["minimal_serve_cnn_body"].items():
        print(f"minimal Serve deployment, CNN-sized body, {clients:2d} clients: {m['per_s']:.1f} requests/s, "
              f"p50 {m['p50_ms']:.2f} ms", flush=True)
    cnn = report["atari-cnn"]
    ceiling = report["minimal_serve_cnn_body"][64]["per_s"]
    mlp64 = report["cartpole-mlp"]["batched"][64]["per_s"]
    print(f"\nCNN at 64 clients: batched {cnn['batched'][64]['per_s']:.1f} vs unbatched "
          f"{cnn['unbatched'][64]['per_s']:.1f} actions/s ({cnn['batched'][64]['per_s'] / cnn['unbatched'][64]['per_s']:.2f}x); "
          f"a do-nothing Serve deployment answers {ceiling:.1f} requests/s there and our batched CartPole MLP "
          f"(a 0.1 ms forward) {mlp64:.1f}/s, so batching can give at most "
          f"{max(ceiling, mlp64) / cnn['unbatched'][64]['per_s']:.2f}x on this machine")
    mlp = report["cartpole-mlp"]
    print(f"CartPole p50 at batch 1: ours {mlp['batched'][1]['p50_ms']:.2f} ms batched, "
          f"{mlp['unbatched'][1]['p50_ms']:.2f} ms unbatched; minimal Serve {r['p50_ms']:.2f} ms")
    if args.out:
        with open(args.out, "w", encoding="utf-8") as f:
            json.dump(report, f, indent=2)


def _wait(port: int, path: str = "/healthz") -> None:
    deadline = time.monotonic() + 90
    while time.monotonic() < deadline:
        try:
            conn = http.client.HTTPConnection("127.0.0.1", port, timeout=5)
            conn.request("GET" if path == "/healthz" else "POST", path, b"{}")
            if conn.getresponse().status == 200:
                return
        except OSError:
            pass
        time.sleep(0.2)
    sys.exit(f"server on port {port} did not come up")

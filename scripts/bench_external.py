"""External-simulator benchmark (``python scripts/bench.py external``): round-trip latency
of ``get_action`` over loopback with 1, 8 and 64 connected simulators, each in a loop of
get_action + log_reward, from client processes (4 at most, threads inside), against one
external runner acting for all of them with batched forward passes (CartPole's MLP)."""

from __future__ import annotations

import json
import socket
import subprocess
import sys
from typing import Any

import numpy as np

CLIENT = r"""
import json, sys, threading, time
import numpy as np
from rlfleet.envs.external import PolicyClient
port, connections, seconds = int(sys.argv[1]), int(sys.argv[2]), float(sys.argv[3])
schemas = json.loads(sys.argv[4])
clients = [PolicyClient(port=port, **schemas) for _ in range(connections)]
latencies = [[] for _ in clients]
go = threading.Barrier(len(clients))
def loop(i):
    c, obs = clients[i], np.zeros(4, np.float32)
    c.start_episode()
    go.wait()
    stop = time.monotonic() + seconds
    while time.monotonic() < stop:
        t = time.perf_counter()
        c.get_action(obs)
        latencies[i].append(time.perf_counter() - t)
        c.log_reward(1.0)
threads = [threading.Thread(target=loop, args=(i,)) for i in range(len(clients))]
[t.start() for t in threads]; [t.join() for t in threads]
print(json.dumps([x for xs in latencies for x in xs]))
"""


def _port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def main(args: Any) -> None:
    import gymnasium as gym

    from rlfleet.rl.external_runner import ExternalEnvRunner
    from rlfleet.rl.module import ModuleSpec
    from rlfleet.envs.schema import space_to_schema

    env = gym.make("CartPole-v1")
    schemas = {"observation_space": space_to_schema(env.observation_space),
               "action_space": space_to_schema(env.action_space)}
    print(f"{'clients':>8s} {'processes':>9s} {'p50 ms':>8s} {'p99 ms':>8s} {'actions/s':>10s}")
    report = {}
    for clients in (1, 8, 64):
        port = _port()
        runner = ExternalEnvRunner(module_spec=ModuleSpec(env.observation_space, env.action_space),
                                   env_config={"port": port}, num_columns=1, fragment_length=10**9, seed=0,
                                   index=0, sample_timeout_s=1.0)
        processes = min(4, clients)
        per = clients // processes
        procs = [subprocess.Popen([sys.executable, "-c", CLIENT, str(port), str(per), str(args.seconds),
                                   json.dumps(schemas)], stdout=subprocess.PIPE, text=True) for _ in range(processes)]
        latencies = [x for p in procs for x in json.loads(p.communicate()[0])]
        runner.stop()
        ms = np.asarray(latencies) * 1000
        report[clients] = {"p50_ms": float(np.percentile(ms, 50)), "p99_ms": float(np.percentile(ms, 99)),
                           "actions_per_s": len(ms) / args.seconds, "processes": processes}
        r = report[clients]
        print(f"{clients:8d} {processes:9d} {r['p50_ms']:8.3f} {r['p99_ms']:8.3f} {r['actions_per_s']:10.0f}", flush=True)
    if args.out:
        with open(args.out, "w", encoding="utf-8") as f:
            json.dump(report, f, indent=2)

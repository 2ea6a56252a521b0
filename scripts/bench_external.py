"""External-simulator benchmark (``python scripts/bench.py external``): round-trip latency
of ``get_action`` over loopback with 1, 8 and 64 connected simulators, each in a loop of
get_action + log_reward, from client processes (4 at most, threads inside), against one
external runner acting for all of them with batched forward passes (CartPole's MLP).

``--hostile``: 8 such simulators, alone and beside 4 hostile connections of each kind
(malformed arrays, absurd shapes, silent readers that flood requests and never read,
connection churn). Per case: p50/p99, the p50 against the alone case of the same
repeat, and the well-behaved calls that waited past ``--deadline-s`` (timeouts). The
server should keep the ratio within 1.5 and the timeouts at 0."""

from __future__ import annotations

import json
import socket
import subprocess
import sys
import time
from typing import Any

import numpy as np

CLIENT = r"""
import json, sys, threading, time
import numpy as np
from rlfleet.envs.external import ExternalError, PolicyClient
port, connections, seconds, deadline_s = int(sys.argv[1]), int(sys.argv[2]), float(sys.argv[3]), float(sys.argv[4])
schemas = json.loads(sys.argv[5])
def connect():
    c = PolicyClient(port=port, timeout_s=deadline_s, **schemas)
    c.start_episode()
    return c
clients = [connect() for _ in range(connections)]
latencies, timeouts = [[] for _ in clients], [0] * connections
go = threading.Barrier(len(clients))
def loop(i):
    obs = np.zeros(4, np.float32)
    go.wait()
    stop = time.monotonic() + seconds
    while time.monotonic() < stop:
        t = time.perf_counter()
        try:
            clients[i].get_action(obs)
            clients[i].log_reward(1.0)
        except (OSError, ExternalError):  # no reply within the deadline (or none at all): count, start over
            timeouts[i] += 1
            clients[i].conn.sock.close()
            clients[i] = connect()
            continue
        latencies[i].append(time.perf_counter() - t)
threads = [threading.Thread(target=loop, args=(i,)) for i in range(len(clients))]
[t.start() for t in threads]; [t.join() for t in threads]
print(json.dumps({"latencies": [x for xs in latencies for x in xs], "timeouts": sum(timeouts)}))
"""

HOSTILE = r"""
import json, socket, struct, sys, threading, time
import msgpack
port, kind, connections = int(sys.argv[1]), sys.argv[2], int(sys.argv[3])
schemas = json.loads(sys.argv[4])
def frame(message):
    body = msgpack.packb({"v": 1, **message}, use_bin_type=True)
    return struct.pack(">I", len(body)) + body
hello = frame({"type": "hello", "token": None, "name": "hostile", **schemas})
start = frame({"type": "start_episode"})
def get_action(array):
    return frame({"type": "get_action", "obs": array})
bad = {"malformed": {"dtype": "float32", "shape": [4], "data": b"\0" * 7},
       "huge-shape": {"dtype": "float32", "shape": [2**32, 2**32], "data": b""}}
flood = get_action({"dtype": "float32", "shape": [4], "data": bytes(16)}) * 1000
def attack():
    while True:
        try:
            with socket.socket() as s:
                if kind == "silent":  # a small window: the server's replies back up at once
                    s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
                s.settimeout(10)
                s.connect(("127.0.0.1", port))
                if kind in bad:  # the error reply, then the server's close
                    s.sendall(hello + start + get_action(bad[kind]))
                    while s.recv(65536):
                        pass
                elif kind == "silent":  # requests until the server drops it, never a read
                    s.sendall(hello + start)
                    while True:
                        s.sendall(flood)
                else:  # churn: hello and gone
                    s.sendall(hello)
        except OSError:
            pass
for _ in range(connections):
    threading.Thread(target=attack, daemon=True).start()
time.sleep(3600)
"""

CASES = ("none", "malformed", "huge-shape", "silent", "churn")


def _port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _schemas() -> tuple[Any, dict]:
    import gymnasium as gym

    from rlfleet.envs.schema import space_to_schema

    env = gym.make("CartPole-v1")
    return env, {"observation_space": space_to_schema(env.observation_space),
                 "action_space": space_to_schema(env.action_space)}


def _runner(env: Any, port: int) -> Any:
    from rlfleet.rl.runners.external_runner import ExternalEnvRunner
    from rlfleet.rl.models.module import ModuleSpec

    return ExternalEnvRunner(module_spec=ModuleSpec(env.observation_space, env.action_space),
                             env_config={"port": port}, num_columns=1, fragment_length=10**9, seed=0,
                             index=0, sample_timeout_s=1.0)


def _clients(port: int, clients: int, seconds: float, deadline_s: float, schemas: dict) -> tuple[np.ndarray, int]:
    """Latencies (ms) of ``clients`` simulators in up to 4 processes, and their timeouts."""
    processes = min(4, clients)
    procs = [subprocess.Popen([sys.executable, "-c", CLIENT, str(port), str(clients // processes), str(seconds),
                               str(deadline_s), json.dumps(schemas)], stdout=subprocess.PIPE, text=True)
             for _ in range(processes)]
    outs = [json.loads(p.communicate()[0]) for p in procs]
    return np.asarray([x for o in outs for x in o["latencies"]]) * 1000, sum(o["timeouts"] for o in outs)


def main(args: Any) -> None:
    if args.hostile:
        hostile(args)
        return
    env, schemas = _schemas()
    print(f"{'clients':>8s} {'processes':>9s} {'p50 ms':>8s} {'p99 ms':>8s} {'actions/s':>10s}")
    report = {}
    for clients in (1, 8, 64):
        port = _port()
        runner = _runner(env, port)
        ms, _ = _clients(port, clients, args.seconds, 60.0, schemas)
        runner.stop()
        report[clients] = {"p50_ms": float(np.percentile(ms, 50)), "p99_ms": float(np.percentile(ms, 99)),
                           "actions_per_s": len(ms) / args.seconds, "processes": min(4, clients)}
        r = report[clients]
        print(f"{clients:8d} {r['processes']:9d} {r['p50_ms']:8.3f} {r['p99_ms']:8.3f} {r['actions_per_s']:10.0f}",
              flush=True)
    _write(args.out, report)


def hostile(args: Any) -> None:
    """Each repeat runs every case on a fresh runner; the ratio compares a case's p50 with
    the repeat's own alone case, so a machine that is busier in one repeat skews no ratio."""
    env, schemas = _schemas()
    runs: dict[str, list[dict]] = {case: [] for case in CASES}
    print(f"{'repeat':>6s} {'case':>10s} {'p50 ms':>8s} {'p99 ms':>8s} {'ratio':>6s} {'actions/s':>10s} "
          f"{'timeouts':>8s} {'refused':>8s} {'dropped':>8s}")
    for repeat in range(args.repeats):
        for case in CASES:
            port = _port()
            runner = _runner(env, port)
            attacker = None
            if case != "none":
                attacker = subprocess.Popen([sys.executable, "-c", HOSTILE, str(port), case, "4", json.dumps(schemas)])
                time.sleep(1.0)  # the attack is under way before the first measured call
            ms, timeouts = _clients(port, 8, args.seconds, args.deadline_s, schemas)
            if attacker is not None:
                attacker.kill()
                attacker.wait()
            server = runner.server
            r = {"p50_ms": float(np.percentile(ms, 50)), "p99_ms": float(np.percentile(ms, 99)),
                 "actions_per_s": len(ms) / args.seconds, "timeouts": timeouts,
                 "refused": server.refused_connections, "dropped_slow_readers": server.dropped_slow_readers}
            runner.stop()
            r["ratio"] = r["p50_ms"] / runs["none"][-1]["p50_ms"] if case != "none" else 1.0
            runs[case].append(r)
            print(f"{repeat:6d} {case:>10s} {r['p50_ms']:8.3f} {r['p99_ms']:8.3f} {r['ratio']:6.2f} "
                  f"{r['actions_per_s']:10.0f} {timeouts:8d} {r['refused']:8d} {r['dropped_slow_readers']:8d}",
                  flush=True)
    report = {case: {key: float(np.median([r[key] for r in rs])) for key in rs[0]} for case, rs in runs.items()}
    print(f"medians over {args.repeats} repeat(s) (timeouts: the sum):")
    for case, r in report.items():
        verdict = "ok" if r["ratio"] <= 1.5 and all(x["timeouts"] == 0 for x in runs[case]) else "OVER"
        print(f"{case:>17s} {r['p50_ms']:8.3f} {r['p99_ms']:8.3f} {r['ratio']:6.2f} {r['actions_per_s']:10.0f} "
              f"{sum(x['timeouts'] for x in runs[case]):8d}  {verdict}", flush=True)
    _write(args.out, {"medians": report, "runs": runs})


def _write(path: str | None, report: dict) -> None:
    if path:
        with open(path, "w", encoding="utf-8") as f:
            json.dump(report, f, indent=2)

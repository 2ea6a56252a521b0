"""Serve a checkpoint over HTTP on Ray Serve.

    python scripts/serve.py --checkpoint runs/ppo_CartPole-v1_X/checkpoint
    curl -s localhost:8000/act -d '{"obs": [0.01, 0.02, -0.03, 0.04]}'
    rlfleet serve --checkpoint DIR --num-replicas 2 --watch

A control policy answers ``POST /act`` ({"obs": one observation or a batch, "explore":
false, "details": false}); an LM checkpoint ``POST /complete`` ({"prompts": [...]}).
``GET /healthz``, ``GET /metadata`` (algorithm, env, spaces, weights version, checkpoint)
and ``POST /reload`` (load the checkpoint file again) work for both; ``--watch`` follows
the checkpoint file by itself. Requests from many clients are batched into one forward
pass (Ray Serve's dynamic batching). Binds 127.0.0.1 unless ``--host`` says otherwise;
any other host needs ``--token`` (or RLFLEET_SERVE_TOKEN), sent by clients as
``Authorization: Bearer <token>``. Runs until Ctrl-C, then removes the deployment and
the Ray instance it started.

Exit codes: 0 stopped by Ctrl-C or --duration, 2 bad input (one line), 3 the server failed.
"""

from __future__ import annotations

import argparse
import functools
import os
import signal
import sys
import time



def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description="Serve an rlfleet checkpoint over HTTP on Ray Serve.",
                                formatter_class=argparse.RawDescriptionHelpFormatter,
                                epilog="exit codes: 0 stopped (Ctrl-C or --duration); 2 bad input; 3 the server failed")
    p.add_argument("--checkpoint", required=True, help="checkpoint directory (or its state.json)")
    p.add_argument("--policy-id", help="of a multi-agent checkpoint: the policy to serve")
    p.add_argument("--host", default="127.0.0.1", help="address to bind (default 127.0.0.1; others need --token)")
    p.add_argument("--port", type=int, default=8000)
    p.add_argument("--token", default=os.environ.get("RLFLEET_SERVE_TOKEN"),
                   help="required from clients as 'Authorization: Bearer TOKEN' (env RLFLEET_SERVE_TOKEN)")
    p.add_argument("--num-replicas", type=int, default=1)
    p.add_argument("--num-cpus-per-replica", type=float, default=1.0)
    p.add_argument("--max-batch-rows", type=int, default=256, help="observations per batched forward pass and request")
    p.add_argument("--batch-wait-ms", type=float, default=0.0,
                   help="how long a batch waits to fill (default 0: what queued up while the last batch ran)")
    p.add_argument("--no-batching", action="store_true", help="one forward pass per request")
    p.add_argument("--max-body-bytes", type=int, default=1 << 20)
    p.add_argument("--watch", action="store_true", help="load the checkpoint again whenever its file changes")
    p.add_argument("--max-sessions", type=int, default=1024,
                   help="a policy with memory: session states a replica keeps at most")
    p.add_argument("--session-ttl", type=float, default=600.0,
                   help="seconds after its last request that a session's state is dropped")
    p.add_argument("--address", help="join a running Ray cluster ('auto' or host:port)")
    p.add_argument("--import", dest="imports", action="append", default=[], metavar="MODULE",
                   help="your module (import name or .py path) to import first; shipped to the replicas")
    p.add_argument("--duration", type=float, help="stop after this many seconds (tests, benchmarks)")
    return p.parse_args(argv)


def build_service(args: argparse.Namespace) -> functools.partial:
    """The picklable factory of what each replica serves: a policy, or an LM's completions."""
    from rlfleet.algorithms import get_config_class
    from rlfleet.rl.checkpoint import load_checkpoint
    from rlfleet.rl.lm.config import LMConfig
    from rlfleet.scripts.tools.serving import CompletionService, PolicyService

    state = load_checkpoint(args.checkpoint)
    config_class = get_config_class(state["algo"])
    if issubclass(config_class, LMConfig):
        algo_class = config_class.algorithm_class(None)  # type: ignore[arg-type]
        return functools.partial(CompletionService, args.checkpoint, algo_class.from_checkpoint,
                                 max_batch_rows=args.max_batch_rows)
    service = functools.partial(PolicyService, args.checkpoint, max_batch_rows=args.max_batch_rows,
                                policy_id=args.policy_id, num_replicas=args.num_replicas,
                                max_sessions=args.max_sessions, session_ttl_s=args.session_ttl)
    service()  # refuse a checkpoint without a module spec here, in one line, not in every replica
    return service


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    from rlfleet.algorithms import UnknownAlgorithmError
    from rlfleet.envs import UserModuleError, import_user_module
    from rlfleet.rl.checkpoint import CheckpointError
    from rlfleet.rl.config import ConfigError
    from rlfleet.runtime import ClusterUnreachableError
    from rlfleet.runtime.base import LOOPBACK

    def fail(message: str) -> int:
        print(f"serve.py: error: {message}", file=sys.stderr)
        return 2

    if args.host not in LOOPBACK and not args.token:
        return fail(f"--host {args.host} is reachable from other machines: give --token (or RLFLEET_SERVE_TOKEN)")
    for name, value in (("--num-replicas", args.num_replicas), ("--max-batch-rows", args.max_batch_rows),
                        ("--max-body-bytes", args.max_body_bytes), ("--max-sessions", args.max_sessions),
                        ("--session-ttl", args.session_ttl)):
        if value <= 0:
            return fail(f"{name} must be > 0, got {value}")
    if not 0 < args.port < 65536:
        return fail(f"--port must be in 1..65535, got {args.port}")
    try:
        modules = [import_user_module(m) for m in args.imports]
        factory = build_service(args)
    except (CheckpointError, UnknownAlgorithmError, ConfigError, UserModuleError) as e:
        return fail(str(e))
    try:
        from rlfleet.runtime.serving import PortUnavailableError, ServeOptions, Server
    except ImportError as e:
        return fail(f"serving needs Ray Serve: pip install 'rlfleet[serve]' ({e})")

    options = ServeOptions(
        host=args.host, port=args.port, num_replicas=args.num_replicas, num_cpus_per_replica=args.num_cpus_per_replica,
        token=args.token, max_body_bytes=args.max_body_bytes, max_batch_rows=args.max_batch_rows,
        batch_wait_s=args.batch_wait_ms / 1000.0, batching=not args.no_batching, watch=args.watch,
    )
    stop = {"now": False}
    signal.signal(signal.SIGINT, lambda *_: stop.update(now=True))
    signal.signal(signal.SIGTERM, lambda *_: stop.update(now=True))
    try:
        server = Server(factory, options, address=args.address, py_modules=tuple(m for m in modules if m))
    except PortUnavailableError as e:  # a port in use: refused before Ray starts (Server checks it first)
        return fail(str(e))
    except ClusterUnreachableError as e:
        return fail(str(e))
    except Exception as e:  # noqa: BLE001 - a replica that cannot start: one line, exit 3
        print(f"serve.py: server failed: {type(e).__name__}: {(str(e).splitlines() or [''])[0]}", file=sys.stderr)
        return 3
    try:
        print(f"serving {args.checkpoint} at {server.url} ({args.num_replicas} replica(s); "
              f"{'batching up to ' + str(args.max_batch_rows) + ' rows' if options.batching else 'no batching'}); "
              "Ctrl-C stops", flush=True)
        deadline = time.monotonic() + args.duration if args.duration else float("inf")
        while not stop["now"] and time.monotonic() < deadline:
            time.sleep(0.2)
    finally:
        signal.signal(signal.SIGINT, signal.SIG_IGN)
        server.stop()
    print("server stopped", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""Evaluate a policy on a local env: a served one over HTTP, or a checkpoint in-process.

    python scripts/evaluate.py --endpoint http://127.0.0.1:8000 --episodes 10
    python scripts/evaluate.py --checkpoint runs/ppo_Pendulum-v1_X/checkpoint --episodes 10
    rlfleet evaluate --endpoint URL --env CartPole-v1 --episodes 20 --json
    python scripts/evaluate.py --checkpoint CKPT --episodes 5 --video videos/

Episode i runs on the env reset with seed ``--seed + i``, acting greedily, so the two
ways give the same per-episode returns for the same policy. Prints the mean, min and max
return and the latency percentiles of the action requests (HTTP round trips, or in-process
calls). ``--env`` defaults to the checkpoint's (or the server's) env and env_config.

``--video DIR`` then plays the first K episodes again (``--video-episodes``, default all),
each from its own seed, on an env made with ``render_mode="rgb_array"``, and writes
``DIR/episode_<i>_seed<SEED+i>.mp4``: the reset frame and one frame per step (rl/video.py).

Exit codes: 0 evaluated, 2 bad input (one line), 3 the endpoint failed mid-run.
"""

from __future__ import annotations

import argparse
import concurrent.futures
import http.client
import json
import os
import sys
import time
import urllib.parse
import uuid
from typing import Any, Callable, Iterable


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description="Evaluate a served policy or a checkpoint on a local env.",
                                formatter_class=argparse.RawDescriptionHelpFormatter,
                                epilog="exit codes: 0 evaluated; 2 bad input; 3 the endpoint failed mid-run")
    source = p.add_mutually_exclusive_group(required=True)
    source.add_argument("--endpoint", help="URL of a server started with serve.py")
    source.add_argument("--checkpoint", help="checkpoint directory, evaluated in this process")
    source.add_argument("--onnx", help="an exported policy.onnx (its .json contract beside it), run with onnxruntime")
    p.add_argument("--env", help="env id (default: the policy's)")
    p.add_argument("--env-config", help="env_config as YAML/JSON (default: the policy's)")
    p.add_argument("--episodes", type=int, default=10)
    p.add_argument("--seed", type=int, default=0, help="episode i is reset with seed SEED + i")
    p.add_argument("--token", help="bearer token of the server")
    p.add_argument("--import", dest="imports", action="append", default=[], metavar="MODULE",
                   help="your module (import name or .py path) that registers the env")
    p.add_argument("--json", action="store_true", help="print one JSON object (per-episode returns included)")
    p.add_argument("--sessions", type=int, default=1,
                   help="with --endpoint: clients acting side by side (a policy with memory: one session each)")
    p.add_argument("--video", metavar="DIR",
                   help="write an mp4 per recorded episode into DIR (made if missing): the episode replayed from "
                        "its seed on an env with render_mode='rgb_array', the reset frame then one frame per step; "
                        "needs pip install 'rlfleet[video]'; MuJoCo without a display: MUJOCO_GL=egl")
    p.add_argument("--video-episodes", type=int, metavar="K",
                   help="with --video: record the first K evaluated episodes (default: all of them)")
    return p.parse_args(argv)


class EndpointError(RuntimeError):
    """The server answered a request with an error or not at all."""


class HttpPolicy:
    """``act(obs)`` through ``POST /act`` on one kept-alive connection."""

    def __init__(self, url: str, token: str | None) -> None:
        parsed = urllib.parse.urlparse(url if "://" in url else f"http://{url}")
        if parsed.scheme != "http" or not parsed.hostname:
            raise ValueError(f"--endpoint {url!r}: expected http://HOST:PORT")
        self.conn = http.client.HTTPConnection(parsed.hostname, parsed.port or 80, timeout=30)
        self.headers = {"Content-Type": "application/json", **({"Authorization": f"Bearer {token}"} if token else {})}
        self.metadata = self._request("GET", "/metadata")
        self.session = uuid.uuid4().hex  # a policy with memory: the server keeps this client's state under it

    def _request(self, method: str, path: str, body: Any = None) -> Any:
        try:
            self.conn.request(method, path, None if body is None else json.dumps(body), self.headers)
            response = self.conn.getresponse()
            data = response.read()
        except OSError as e:
            raise EndpointError(f"{method} {path}: {e}") from None
        if response.status != 200:
            raise EndpointError(f"{method} {path}: HTTP {response.status}: {data.decode(errors='replace')[:200]}")
        return json.loads(data)

    def act(self, obs: Any, first: bool) -> Any:
        if "memory" not in self.metadata:
            return self._request("POST", "/act", {"obs": obs})["actions"]
        return self._request("POST", "/act", {"obs": obs, "session": self.session, "reset": first})["actions"]


def run_episodes(env: Any, act: Callable[[Any, bool], Any], episodes: Iterable[int],
                 seed: int) -> tuple[list[float], list[float]]:
    """(returns, seconds per action request) of the episodes numbered ``episodes``, episode
    i seeded seed + i; ``act(obs, first)`` is told where an episode starts (a policy with
    memory starts afresh)."""
    returns, latencies = [], []
    for i in episodes:
        obs, _ = env.reset(seed=seed + i)
        total, done, first = 0.0, False, True
        while not done:
            started = time.perf_counter()
            action = act(obs, first)
            first = False
            latencies.append(time.perf_counter() - started)
            obs, reward, terminated, truncated, _ = env.step(action)
            total += float(reward)
            done = terminated or truncated
        returns.append(total)
    return returns, latencies


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    import numpy as np
    import tree
    import yaml
    from gymnasium.spaces import Discrete

    from rlfleet.envs import EnvConfigError, EnvNotFoundError, UserModuleError, import_user_module, make_env_creator, probe_env
    from rlfleet.rl.checkpoint import CheckpointError
    from rlfleet.rl.inference import Policy, to_json
    from rlfleet.envs.schema import space_from_schema
    from rlfleet.rl.spaces import space_structure
    from rlfleet.rl.video import Recorder, VideoError, check_video_dir, require_imageio

    def fail(message: str, code: int = 2) -> int:
        print(f"evaluate.py: error: {message}", file=sys.stderr)
        return code

    if args.episodes <= 0:
        return fail(f"--episodes must be > 0, got {args.episodes}")
    if args.sessions <= 0 or (args.sessions > 1 and not args.endpoint):
        return fail(f"--sessions {args.sessions}: give a count > 0, and more than 1 only with --endpoint")
    if args.video_episodes is not None and not args.video:
        return fail("--video-episodes needs --video DIR")
    video_episodes = args.episodes if args.video_episodes is None else args.video_episodes
    if args.video and not 0 < video_episodes <= args.episodes:
        return fail(f"--video-episodes must be in 1..--episodes ({args.episodes}), got {video_episodes}")
    if args.video:
        try:
            require_imageio()
            check_video_dir(args.video)
        except VideoError as e:
            return fail(f"--video: {e}")
    try:
        for module in args.imports:
            import_user_module(module)
        if args.checkpoint:
            policy = Policy.load(args.checkpoint)
            meta = policy.metadata()
            action_space = policy.action_space

            memory: dict[str, Any] = {"state": None}  # a recurrent policy's state, None at episode starts

            def act(obs: Any, first: bool) -> Any:
                batched = tree.map_structure(lambda x: np.asarray(x)[None], obs)
                out = policy.act(batched, state=None if first else memory["state"])
                memory["state"] = out.get("state")
                return tree.map_structure(lambda x: x[0], out["actions"])
        elif args.onnx:
            meta, act = onnx_policy(args.onnx)
        else:
            remote = HttpPolicy(args.endpoint, args.token)
            meta = remote.metadata
            action_space = space_from_schema(meta["action_space"])
            structure = space_structure(action_space)
            leaves = tree.flatten(structure)

            def http_act(remote: HttpPolicy) -> Callable[[Any, bool], Any]:
                def act(obs: Any, first: bool) -> Any:
                    answer = remote.act(to_json(obs), first)
                    parts = [answer] if len(leaves) == 1 else tree.flatten_up_to(structure, _tuples(answer, structure))
                    values = [int(a) if isinstance(s, Discrete) else np.asarray(a, s.dtype)
                              for a, s in zip(parts, leaves)]
                    return values[0] if len(leaves) == 1 else tree.unflatten_as(structure, values)
                return act

            act = http_act(remote)
        env_name = args.env or meta["env"]
        env_config = yaml.safe_load(args.env_config) if args.env_config else (meta.get("env_config") or {})
        # before the probe: under a MUJOCO_GL that cannot work even importing mujoco fails, said here in one line
        recorder = Recorder(make_env_creator(env_name, env_config)) if args.video else None
        env = probe_env(make_env_creator(env_name, env_config))
    except (CheckpointError, EnvNotFoundError, EnvConfigError, UserModuleError, ValueError, yaml.YAMLError) as e:
        return fail(str(e).splitlines()[0])
    except EndpointError as e:
        return fail(f"cannot reach the endpoint: {e}")
    try:
        if args.sessions == 1:
            returns, latencies = run_episodes(env, act, range(args.episodes), args.seed)
        else:  # clients side by side, each with its own env and connection; episode i still seeded seed + i
            clients = [(env, act)] + [(probe_env(make_env_creator(env_name, env_config)),
                                       http_act(HttpPolicy(args.endpoint, args.token))) for _ in range(args.sessions - 1)]
            with concurrent.futures.ThreadPoolExecutor(len(clients)) as pool:
                done = list(pool.map(lambda k: run_episodes(*clients[k], range(k, args.episodes, len(clients)),
                                                            args.seed), range(len(clients))))
            returns = [0.0] * args.episodes
            for k, (part, _) in enumerate(done):
                returns[k::len(clients)] = part
            latencies = [x for _, part in done for x in part]
            for extra, _ in clients[1:]:
                extra.close()
        videos = [] if recorder is None else [
            recorder.record(act, os.path.join(args.video, f"episode_{i:03d}_seed{args.seed + i}.mp4"),
                            seed=args.seed + i) for i in range(video_episodes)]
    except EndpointError as e:
        return fail(f"the endpoint failed mid-run: {e}", 3)
    except VideoError as e:  # a frame of another size, ffmpeg failing on a full disk
        return fail(str(e).splitlines()[0])
    finally:
        env.close()
        if recorder is not None:
            recorder.close()
    ms = np.asarray(latencies) * 1000.0
    summary = {
        "source": args.endpoint or args.checkpoint or args.onnx, "env": env_name, "episodes": len(returns), "seed": args.seed,
        "return_mean": float(np.mean(returns)), "return_min": float(np.min(returns)), "return_max": float(np.max(returns)),
        "latency_ms_p50": float(np.percentile(ms, 50)), "latency_ms_p90": float(np.percentile(ms, 90)),
        "latency_ms_p99": float(np.percentile(ms, 99)), "requests": len(latencies),
        "weights_version": meta.get("weights_version"), "returns": returns,
        **({"videos": [{"path": v.path, "frames": v.frames, "episode_length": v.episode_length,
                        "episode_return": v.episode_return, "seed": v.seed} for v in videos]} if args.video else {}),
    }
    if args.json:
        print(json.dumps(summary))
    else:
        print(f"{summary['source']} on {env_name}: {len(returns)} episodes, return mean {summary['return_mean']:.2f} "
              f"(min {summary['return_min']:.2f}, max {summary['return_max']:.2f}); {len(latencies)} action requests, "
              f"latency p50 {summary['latency_ms_p50']:.3f} ms, p90 {summary['latency_ms_p90']:.3f} ms, "
              f"p99 {summary['latency_ms_p99']:.3f} ms")
        for v in videos:
            print(f"video {v.path}: {v.frames} frames (the reset frame and {v.episode_length} steps), "
                  f"return {v.episode_return:.2f}")
    return 0


def onnx_policy(path: str) -> tuple[dict, Callable[[Any], Any]]:
    """(metadata, act) of an exported model, from its contract: observation leaves in, in
    sorted-key order with a batch axis of 1; action leaves out."""
    import numpy as np
    import tree
    from gymnasium.spaces import Discrete

    from rlfleet.envs.schema import space_from_schema
    from rlfleet.rl.export import read_contract
    from rlfleet.rl.spaces import space_structure

    try:
        import onnxruntime
    except ImportError as e:
        raise ValueError(f"--onnx needs onnxruntime: pip install 'rlfleet[export]' ({e})") from None
    if not os.path.isfile(path):
        raise ValueError(f"--onnx {path!r}: no such file")
    contract = read_contract(path + ".json")  # ExportError is a ValueError
    try:
        session = onnxruntime.InferenceSession(path)
    except Exception as e:  # noqa: BLE001 - onnxruntime's own kinds (InvalidProtobuf, Fail, ...), none standard
        detail = (str(e).strip().splitlines() or [""])[0][:200]
        raise ValueError(f"--onnx {path!r} is not an ONNX model onnxruntime can load ({type(e).__name__}: {detail})"
                         ) from None
    names = [i["name"] for i in contract["inputs"]]
    model_names = [i.name for i in session.get_inputs()]
    if names != model_names:
        raise ValueError(f"--onnx {path!r}: its contract {path}.json names inputs {names}, the model's are "
                         f"{model_names}: the contract of another model")
    action_structure = space_structure(space_from_schema(contract["action_space"]))
    memory = contract.get("memory")  # a recurrent policy: its state is the last input and output
    if len(session.get_outputs()) != len(tree.flatten(action_structure)) + bool(memory):
        raise ValueError(f"--onnx {path!r}: {len(session.get_outputs())} outputs, its contract {path}.json has "
                         f"{len(tree.flatten(action_structure))} action leaves: the contract of another model")
    inputs = [(i["name"], np.dtype(i["dtype"])) for i in contract["inputs"] if not memory or i["name"] != memory["input"]]
    carried: dict[str, Any] = {}

    def act(obs: Any, first: bool) -> Any:
        feed = {name: np.asarray(x, dtype)[None] for (name, dtype), x in zip(inputs, tree.flatten(obs))}
        if memory:
            feed[memory["input"]] = (np.zeros((1, int(memory["size"])), np.float32) if first
                                     else carried["state"])
        outputs = session.run(None, feed)
        if memory:
            carried["state"] = outputs.pop()
        outputs = [o[0] for o in outputs]
        leaves = [int(o) if isinstance(s, Discrete) else o for o, s in zip(outputs, tree.flatten(action_structure))]
        return tree.unflatten_as(action_structure, leaves)

    return {"env": contract["env"], "env_config": contract.get("env_config") or {},
            "weights_version": contract["weights_version"]}, act


def _tuples(answer: Any, structure: Any) -> Any:
    """JSON lists back into the tuples of a Tuple action space's structure."""
    if isinstance(structure, tuple):
        return tuple(_tuples(a, s) for a, s in zip(answer, structure))
    if isinstance(structure, dict):
        return {k: _tuples(answer[k], s) for k, s in structure.items()}
    return answer


if __name__ == "__main__":
    sys.exit(main())

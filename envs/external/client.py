"""The Python client of the external-simulator protocol (PROTOCOL.md).

Needs numpy and msgpack only, nothing else of rlfleet, so a simulator's process can use it
(or copy this file and protocol.py). One client is one connection and runs one episode at
a time; open several for parallel episodes.

    from rlfleet.envs.external import PolicyClient
    client = PolicyClient(port=9900, observation_space={"type": "box", "shape": [4], "dtype": "float32",
                          "low": "-inf", "high": "inf"}, action_space={"type": "discrete", "n": 2, "start": 0})
    client.start_episode()
    action = client.get_action(obs)           # the server's policy acts
    client.log_reward(1.0)                    # belongs to the last action
    client.end_episode(obs, terminated=True)  # the final observation
"""

from __future__ import annotations

import math
import socket
import time
from typing import Any

import numpy as np

from rlfleet.envs.external.protocol import Connection, decode, encode


class ExternalError(RuntimeError):
    """The server refused a message (its reason is the message) or went away."""


class PolicyClient:
    def __init__(self, *, host: str = "127.0.0.1", port: int = 9900, observation_space: dict, action_space: dict,
                 token: str | None = None, name: str = "client", timeout_s: float = 60.0,
                 connect_timeout_s: float = 60.0) -> None:
        """Connects and says hello. A refused connection (the run is not listening yet) and a
        ``reconnect`` reply (the run took its spaces from this hello) are retried for
        ``connect_timeout_s``; ``timeout_s`` bounds every later reply."""
        hello = {"type": "hello", "token": token, "name": name,
                 "observation_space": observation_space, "action_space": action_space}
        deadline = time.monotonic() + connect_timeout_s
        while True:
            try:
                sock = socket.create_connection((host, port), timeout=timeout_s)
            except ConnectionRefusedError:
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.2)
                continue
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)  # small frames: no Nagle delay
            self.conn = Connection(sock)
            welcome = self._call(hello)
            if welcome["type"] != "reconnect":
                break
            sock.close()
            if time.monotonic() > deadline:
                raise ExternalError(f"the server on {host}:{port} asked to reconnect for {connect_timeout_s:g} s")
            time.sleep(float(welcome.get("after_s", 1.0)))
        self.runner, self.weights_version = welcome["runner"], welcome["weights_version"]
        self.episode: int | None = None

    def _call(self, message: dict[str, Any]) -> dict[str, Any]:
        self.conn.send(message)
        reply = self.conn.receive()
        if reply["type"] == "error":
            raise ExternalError(reply.get("message", "error"))
        return reply

    def start_episode(self) -> int:
        self.episode = self._call({"type": "start_episode"})["episode"]
        return self.episode

    def get_action(self, obs: Any) -> Any:
        """The server policy's action for ``obs`` (numpy arrays, dicts, lists, ints)."""
        reply = self._call({"type": "get_action", "obs": encode(obs)})
        self.weights_version = reply["weights_version"]
        return decode(reply["action"])

    def log_reward(self, reward: float) -> None:
        """Add ``reward`` to the last action's; no reply (an error arrives with the next call)."""
        self.conn.send({"type": "log_reward", "reward": float(reward)})

    def end_episode(self, obs: Any, *, terminated: bool = False, truncated: bool = False) -> None:
        """End the episode with its last observation: ``terminated`` (a terminal state, no
        future) or ``truncated`` (cut by a time limit; the server bootstraps from ``obs``)."""
        self._call({"type": "end_episode", "obs": encode(obs), "terminated": bool(terminated),
                    "truncated": bool(truncated)})
        self.episode = None

    # -- client-side inference ---------------------------------------------------------------
    def fetch_policy(self, seed: int | None = None) -> "LocalPolicy":
        """The server's current policy, to act with here (needs onnxruntime)."""
        reply = self._call({"type": "get_policy"})
        return LocalPolicy(reply["model"], reply["contract"], reply["weights_version"], seed=seed)

    def report_episode(self, steps: list[dict[str, Any]], rewards: list[float], obs: Any, *,
                       terminated: bool = False, truncated: bool = False) -> dict[str, Any]:
        """Steps acted here: ``steps`` as returned by :meth:`LocalPolicy.act` (``obs``,
        ``action``, ``logp``, ``weights_version``), one reward per step, and the observation
        after the last step. ``terminated`` or ``truncated`` ends the episode; neither
        reports a part of it that goes on from ``obs`` (report long episodes in parts:
        a part is judged for staleness alone). The reply says whether it was accepted (not
        too stale) and the server's current weights version (fetch the policy again when it
        moved on)."""
        reply = self._call({"type": "report_episode", "steps": [{**s, "obs": encode(s["obs"]),
                                                                 "action": encode(s["action"])} for s in steps],
                            "rewards": [float(r) for r in rewards], "obs": encode(obs),
                            "terminated": bool(terminated), "truncated": bool(truncated)})
        self.weights_version = reply["weights_version"]
        return reply

    def close(self) -> None:
        try:
            self.conn.send({"type": "bye"})
        except OSError:
            pass
        self.conn.sock.close()

    def __enter__(self) -> "PolicyClient":
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()


def _leaves(obs: Any) -> list[Any]:
    """Observation leaves in the order the exported model takes them (a dict's keys sorted)."""
    if isinstance(obs, dict):
        return [leaf for key in sorted(obs) for leaf in _leaves(obs[key])]
    if isinstance(obs, (list, tuple)):
        return [leaf for part in obs for leaf in _leaves(part)]
    return [obs]


def _bound(value: Any, shape: list[int]) -> np.ndarray:
    as_float = np.vectorize(float)(np.asarray(value, dtype=object)) if not isinstance(value, (int, float)) else value
    return np.broadcast_to(np.asarray(as_float, np.float64), shape)


class LocalPolicy:
    """The server's policy run here with onnxruntime: ``act(obs)`` samples an action and its
    log-probability from the distribution the model outputs (masked logits where the env
    masks actions)."""

    def __init__(self, model: bytes, contract: dict[str, Any], weights_version: int, *, seed: int | None = None) -> None:
        import onnxruntime  # only client-side inference needs it

        self.session = onnxruntime.InferenceSession(model)
        self.inputs = contract["inputs"]
        self.kind = contract["distribution"]
        self.epsilon = float(contract.get("epsilon", 0.0))
        self.space = contract["action_space"]
        self.weights_version = weights_version
        self.rng = np.random.default_rng(seed)

    def act(self, obs: Any) -> tuple[Any, dict[str, Any]]:
        """(the action for the env, the step to report: obs, action as sampled, logp, version)."""
        feed = {i["name"]: np.asarray(x, i["dtype"])[None] for i, x in zip(self.inputs, _leaves(obs))}
        inputs = self.session.run(["dist_inputs"], feed)[0][0].astype(np.float64)
        if self.kind == "epsilon_greedy":  # a Q-network: logp is not used (off-policy)
            legal = np.flatnonzero(inputs > np.finfo(np.float32).min / 2)
            pick = int(self.rng.choice(legal)) if self.rng.random() < self.epsilon else int(np.argmax(inputs))
            return pick + int(self.space.get("start", 0)), {"obs": obs, "action": pick, "logp": 0.0,
                                                              "weights_version": self.weights_version}
        if self.kind == "diag_gaussian":
            mean, log_std = np.split(inputs, 2)
            action = mean + np.exp(log_std) * self.rng.standard_normal(mean.shape)
            logp = float(np.sum(-0.5 * ((action - mean) / np.exp(log_std)) ** 2 - log_std - 0.5 * math.log(2 * math.pi)))
            shape = self.space["shape"]
            env_action = np.clip(action, _bound(self.space["low"], shape), _bound(self.space["high"], shape))
            action, env_action = action.astype(np.float32), env_action.astype(np.float32)
        else:
            sizes = [self.space["n"]] if self.kind == "categorical" else self.space["nvec"]
            picks, logp = [], 0.0
            for logits in np.split(inputs, np.cumsum(sizes)[:-1]):
                logp_all = logits - (logits.max() + np.log(np.exp(logits - logits.max()).sum()))
                p = np.exp(logp_all)
                pick = int(self.rng.choice(len(p), p=p / p.sum()))
                picks.append(pick)
                logp += float(logp_all[pick])
            if self.kind == "categorical":
                action, env_action = picks[0], picks[0] + int(self.space.get("start", 0))
            else:
                action = np.asarray(picks, np.int64)
                env_action = action + np.asarray(self.space.get("start", [0] * len(picks)), np.int64)
        return env_action, {"obs": obs, "action": action, "logp": logp, "weights_version": self.weights_version}

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

import socket
from typing import Any

from rlfleet.envs.external.protocol import Connection, decode, encode


class ExternalError(RuntimeError):
    """The server refused a message (its reason is the message) or went away."""


class PolicyClient:
    def __init__(self, *, host: str = "127.0.0.1", port: int = 9900, observation_space: dict, action_space: dict,
                 token: str | None = None, name: str = "client", timeout_s: float = 60.0) -> None:
        sock = socket.create_connection((host, port), timeout=timeout_s)
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)  # small frames: no Nagle delay
        self.conn = Connection(sock)
        welcome = self._call({"type": "hello", "token": token, "name": name,
                              "observation_space": observation_space, "action_space": action_space})
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

"""The listening side of the external-simulator protocol, as RL sees it: what each
message means, how the pending ``get_action`` requests of every connected simulator become
one call of the policy, and how each connection's steps are recorded until they form whole
columns of a fragment. Also the one-shot wait for the first hello's spaces
(``await_declared_spaces``).

Knows no policy: ``act(observations, memories) -> (actions, leaves, extras, memories)``
and ``value(observations, memories)`` are given by the env runner that owns the server
(rl/runners/external_runner.py). A connection's memory is the policy's opaque per-episode
value (a recurrent state; None at an episode's start and for a policy without one): the
server keeps it with the connection and hands it back with each observation. A step is
complete once its reward and its next observation are known (the next ``get_action``, or
``end_episode``); ``take_columns`` hands out runs of T complete steps of one connection.

Sockets, framing, per-peer turns and refusals live in transport.py (``PeerServer``), so
this file is about episodes and that one about keeping one hostile peer from stalling or
killing the thread that serves the others.
"""

from __future__ import annotations

import dataclasses
import hmac
import itertools
import socket
import sys
import time
from typing import Any, Callable

import numpy as np

from rlfleet.envs.external.protocol import Connection, ProtocolError, decode, encode
from rlfleet.envs.external.transport import Peer, PeerServer

LOOPBACK = ("127.0.0.1", "localhost", "::1")



@dataclasses.dataclass
class Step:
    obs: Any
    action: Any  # as the policy returned it (leaves), for the batch
    extras: dict[str, float]  # logp, values, ... of the acting forward pass
    weights_version: int
    is_first: bool
    reward: float = 0.0
    terminated: bool = False
    truncated: bool = False
    final_obs: Any = None  # at a truncation
    next_value: float | None = None  # V(s_{t+1}); 0 after a termination
    complete: bool = False
    memory: Any = None  # the connection's memory the step was acted from (None: an episode's start)


@dataclasses.dataclass
class Episode:
    id: int
    steps_taken: int = 0
    total: float = 0.0


class _Simulator(Peer):
    """A connection's episode state: the episode it runs, and its steps no column holds yet."""

    def __init__(self, sock: socket.socket, address: Any) -> None:
        super().__init__(sock, address)
        self.episode: Episode | None = None
        self.reported = Episode(-1)  # the client-side episode reported in parts so far
        self.steps: list[Step] = []
        self.memory: Any = None  # the policy's memory of the running episode (module doc)


class ExternalServer(PeerServer):
    """Serves simulators on ``host:port`` from a background thread (see the module doc)."""

    peer_type = _Simulator

    def __init__(self, *, host: str, port: int, token: str | None, observation_space: dict, action_space: dict,
                 spaces_equal: Callable[[dict, dict], bool], check_obs: Callable[[Any], str | None],
                 act: Callable[[list[Any], list[Any]], tuple[list[Any], list[Any], list[dict[str, float]], list[Any]]],
                 value: Callable[[list[Any], list[Any]], list[float]] | None, hello_timeout_s: float = 10.0,
                 label: str = "external runner", policy: Callable[[], tuple[bytes, dict]] | None = None,
                 max_lag: int | None = 8, column_length: int = 0, column_count: int = 0,
                 memory: bool = False) -> None:
        """``memory``: the policy keeps a memory per episode, which only server-side
        inference (``get_action``) can carry: ``report_episode`` is refused."""
        if host not in LOOPBACK and not token:
            raise ValueError(f"external env: host {host!r} is reachable from other machines; set a token")
        super().__init__(host=host, port=port, label=label, hello_timeout_s=hello_timeout_s)
        self.token, self.observation_space, self.action_space = token, observation_space, action_space
        self.spaces_equal, self.check_obs, self.act, self.value = spaces_equal, check_obs, act, value
        self.policy, self.max_lag, self.memory = policy, max_lag, memory
        self.weights_version = 0
        self.too_stale = 0  # reports (episodes or parts of one) dropped for their policy lag
        self.columns: list[list[Step]] = []  # runs of T complete steps, ready for a fragment
        self.bootstrap: list[Any] = []  # the observation after each column's last step
        self.episode_returns: list[float] = []
        self.episode_lengths: list[int] = []
        self.dropped_episodes = 0
        self.episode_ids = itertools.count()
        self.column_length = column_length  # steps per column and columns per fragment, as the runner asks
        self.column_count = column_count
        self.dropped_steps = 0  # steps simulators took that no fragment will hold (the backlog's oldest)
        self.warned_backlog = False
        self._start()

    # -- the driver's side -----------------------------------------------------------------
    def take_columns(self, length: int, count: int, timeout_s: float) -> tuple[list[list[Step]], list[Any]] | None:
        """``count`` columns of ``length`` steps (and their bootstrap observations), or None
        after ``timeout_s``."""
        deadline = time.monotonic() + timeout_s
        with self.lock:
            self.column_length, self.column_count = length, count
            self._cut_columns()
            while len(self.columns) < count:
                left = deadline - time.monotonic()
                if left <= 0:
                    return None
                self.lock.wait(left)
            columns, self.columns = self.columns[:count], self.columns[count:]
            bootstrap, self.bootstrap = self.bootstrap[:count], self.bootstrap[count:]
            return columns, bootstrap

    def pop_episodes(self) -> tuple[list[float], list[int], int, int, int]:
        """(returns, lengths, episodes dropped by a lost client, reported episodes dropped
        for their policy lag, steps dropped from a full backlog) since the last call."""
        with self.lock:
            out = (self.episode_returns, self.episode_lengths, self.dropped_episodes, self.too_stale,
                   self.dropped_steps)
            self.episode_returns, self.episode_lengths = [], []
            self.dropped_episodes = self.too_stale = self.dropped_steps = 0
            return out

    @property
    def num_clients(self) -> int:
        with self.lock:  # the serving thread adds and removes peers
            return sum(1 for p in self.peers.values() if p.welcomed)

    # -- the serving thread's hooks (transport.py calls them) ------------------------------

    def _handle(self, peer: _Simulator, message: dict[str, Any], pending: list[tuple[_Simulator, Any]]) -> None:
        kind = message["type"]
        if not peer.welcomed:
            if kind != "hello":
                raise ProtocolError(f"the first message must be 'hello', got {kind!r}")
            self._hello(peer, message)
            return
        if kind == "start_episode":
            if peer.episode is not None:
                raise ProtocolError("start_episode while an episode is running: end it first")
            peer.episode, peer.memory = Episode(next(self.episode_ids)), None
            self._send(peer, {"type": "ok", "episode": peer.episode.id})
        elif kind == "get_action":
            if peer.episode is None:
                raise ProtocolError("get_action outside an episode: send start_episode first")
            obs = self._observation(message)
            pending.append((peer, obs))
        elif kind == "log_reward":
            reward = message.get("reward")
            if isinstance(reward, bool) or not isinstance(reward, (int, float)) or not np.isfinite(reward):
                raise ProtocolError(f"reward must be a finite number, got {reward!r}")
            if peer.episode is None or not peer.steps or peer.steps[-1].complete:
                raise ProtocolError("log_reward before the episode's first action: a reward belongs to an action")
            peer.steps[-1].reward += float(reward)
            peer.episode.total += float(reward)
        elif kind == "end_episode":
            if peer.episode is None:
                raise ProtocolError("end_episode outside an episode")
            terminated, truncated = message.get("terminated"), message.get("truncated")
            if not isinstance(terminated, bool) or not isinstance(truncated, bool) or terminated == truncated:
                raise ProtocolError("end_episode needs exactly one of terminated and truncated true")
            obs = self._observation(message)
            self._end_episode(peer, obs, terminated=terminated)
            self._send(peer, {"type": "ok"})
        elif kind == "get_policy":
            self._send_policy(peer)
        elif kind == "report_episode":
            if self.memory:
                raise ProtocolError("report_episode: this run's policy has memory, which the server carries "
                                    "between observations: act through get_action")
            self._report(peer, message)
        elif kind == "bye":
            self._drop(peer)
        else:
            raise ProtocolError(f"unknown message type {kind!r}")

    def _hello(self, peer: _Simulator, message: dict[str, Any]) -> None:
        if not _token_ok(message.get("token"), self.token):
            raise ProtocolError("wrong or missing token")
        for key, ours in (("observation_space", self.observation_space), ("action_space", self.action_space)):
            theirs = message.get(key)
            # the same map is the same space: building both spaces to compare them costs more than
            # the rest of a connection, and a churning client must not buy that with each hello
            if not isinstance(theirs, dict) or (theirs != ours and not self.spaces_equal(theirs, ours)):
                raise ProtocolError(f"hello: {key} {theirs!r} differs from this runner's {ours!r}")
        peer.welcomed = True
        self._send(peer, {"type": "welcome", "runner": self.address[1], "weights_version": self.weights_version})

    def _send_policy(self, peer: _Simulator) -> None:
        """The current policy as ONNX bytes with its version, for client-side inference."""
        if self.policy is None:
            raise ProtocolError("this runner's algorithm has no policy for client-side inference (use get_action)")
        model, contract = self.policy()
        self._send(peer, {"type": "policy", "weights_version": self.weights_version, "model": model,
                          "contract": contract})

    def _report(self, peer: _Simulator, message: dict[str, Any]) -> None:
        """Steps acted on the client's side: each step's observation, action (as the policy
        sampled it), log-probability and weights version, the rewards, and the observation
        after the last step. ``terminated`` or ``truncated`` ends the episode; neither
        reports a part of one that goes on from ``obs`` (its end is bootstrapped from
        ``obs`` like a truncation, so a part stands alone when its neighbour is too stale).
        Values come from the runner's current critic."""
        if peer.episode is not None:
            raise ProtocolError("report_episode while a server-side episode is running")
        steps = message.get("steps")
        rewards = message.get("rewards")
        if not isinstance(steps, list) or not steps or not isinstance(rewards, list) or len(rewards) != len(steps):
            raise ProtocolError("report_episode needs 'steps' (a non-empty list) and one reward per step")
        terminated, truncated = message.get("terminated"), message.get("truncated")
        if not isinstance(terminated, bool) or not isinstance(truncated, bool) or (terminated and truncated):
            raise ProtocolError("report_episode needs terminated and truncated as booleans, at most one true")
        observations, actions, logps, versions = [], [], [], []
        for i, step in enumerate(steps):
            if not isinstance(step, dict) or not {"obs", "action", "logp", "weights_version"} <= set(step):
                raise ProtocolError(f"report_episode step {i} needs obs, action, logp and weights_version")
            observations.append(self._observation(step))
            actions.append(decode(step["action"]))
            logps.append(step["logp"])
            versions.append(step["weights_version"])
        if not all(isinstance(x, (int, float)) and not isinstance(x, bool) and np.isfinite(x) for x in logps + rewards):
            raise ProtocolError("report_episode: logp and rewards must be finite numbers")
        if not all(isinstance(v, int) and 0 <= v <= self.weights_version for v in versions):
            raise ProtocolError(f"report_episode: weights_version must be an int between 0 and {self.weights_version}")
        final_obs = self._observation(message)
        lag = self.weights_version - min(versions)
        stale = self.max_lag is not None and lag > self.max_lag
        values = [0.0] * (len(steps) + 1)
        if self.value is not None and not stale:
            values = self.value(observations + [final_obs], [None] * (len(observations) + 1))
        with self.lock:
            episode = peer.reported
            if episode.steps_taken == 0:
                episode.id = next(self.episode_ids)
            episode.total += float(sum(rewards))
            episode.steps_taken += len(steps)
            if stale:
                self.too_stale += 1
            else:
                for i, (obs, action, logp, version) in enumerate(zip(observations, actions, logps, versions)):
                    # a policy without a critic (DQN's Q-network) keeps no logp or values: its
                    # server-side steps have none either, and the two mix in one fragment
                    extras = {"logp": float(logp), "values": values[i]} if self.value is not None else {}
                    peer.steps.append(Step(obs, [np.asarray(action)], extras, version, i == 0,
                                           reward=float(rewards[i]), next_value=values[i + 1], complete=True))
                last = peer.steps[-1]
                last.terminated, last.truncated = terminated, not terminated  # a part ends like a truncation
                if terminated:
                    last.next_value = 0.0
                else:
                    last.final_obs = final_obs
            if terminated or truncated:  # the episode happened, stale parts or not: it counts in the metrics
                self.episode_returns.append(episode.total)
                self.episode_lengths.append(episode.steps_taken)
                peer.reported = Episode(-1)
            self._cut_columns()
        reply = {"type": "ok", "accepted": not stale, "weights_version": self.weights_version}
        self._send(peer, reply if not stale else {**reply, "reason": f"policy lag {lag} over {self.max_lag}"})

    def _observation(self, message: dict[str, Any]) -> Any:
        obs = decode(message.get("obs"))
        problem = self.check_obs(obs)
        if problem:
            raise ProtocolError(f"observation {problem}")
        return obs

    def _answer(self, pending: list[tuple[_Simulator, Any]]) -> None:
        """One forward pass for every pending get_action; the previous step of each
        connection learns its next observation's value."""
        try:
            actions, leaves, extras, memories = self.act([obs for _, obs in pending],
                                                         [peer.memory for peer, _ in pending])
        except Exception as e:  # noqa: BLE001 - an observation the space check let through broke the batch
            if len(pending) == 1:
                self._refuse(pending[0][0], f"the policy could not act on this observation: {type(e).__name__}: {e}")
            else:  # act one by one: only the culprit is refused
                for one in pending:
                    self._answer([one])
            return
        version = self.weights_version
        with self.lock:
            for (peer, obs), action, leaf, extra, memory in zip(pending, actions, leaves, extras, memories):
                if peer.sock not in self.peers:
                    continue
                if peer.steps and not peer.steps[-1].complete:
                    previous = peer.steps[-1]
                    previous.next_value = extra.get("values", 0.0)
                    previous.complete = True
                first = peer.episode.steps_taken == 0
                peer.steps.append(Step(obs, leaf, extra, version, first, memory=peer.memory))
                peer.memory = memory
                peer.episode.steps_taken += 1
                self._send(peer, {"type": "action", "action": encode(action), "weights_version": version})
            self._cut_columns()

    def _end_episode(self, peer: _Simulator, final_obs: Any, *, terminated: bool) -> None:
        with self.lock:
            episode = peer.episode
            if peer.steps and not peer.steps[-1].complete:
                last = peer.steps[-1]
                last.terminated, last.truncated = terminated, not terminated
                if terminated:
                    last.next_value = 0.0
                else:
                    last.final_obs = final_obs
                    last.next_value = self.value([final_obs], [peer.memory])[0] if self.value is not None else 0.0
                last.complete = True
            if episode.steps_taken:
                self.episode_returns.append(episode.total)
                self.episode_lengths.append(episode.steps_taken)
            peer.episode, peer.memory = None, None
            self._cut_columns()

    def _cut_columns(self) -> None:
        """Move runs of T complete steps into ``columns`` (caller holds the lock)."""
        T = self.column_length
        if T <= 0:
            return
        cut = False
        for peer in self.peers.values():
            while len(peer.steps) >= T and peer.steps[T - 1].complete:
                column, peer.steps = peer.steps[:T], peer.steps[T:]
                last = column[-1]
                after = peer.steps[0].obs if peer.steps else (last.final_obs if last.final_obs is not None else last.obs)
                self.columns.append(column)
                self.bootstrap.append(after)
                cut = True
        backlog = 4 * self.column_count  # simulators faster than training: keep the newest data
        if self.column_count and len(self.columns) > backlog:
            excess = len(self.columns) - backlog
            if not self.warned_backlog:
                self.warned_backlog = True
                print(f"external runner on port {self.address[1]}: simulators produce faster than training takes; "
                      f"keeping the newest {backlog} columns", file=sys.stderr, flush=True)
            self.dropped_steps += excess * T
            del self.columns[:excess], self.bootstrap[:excess]
        if cut:
            self.lock.notify_all()

    def _discard(self, peer: _Simulator) -> None:
        """The peer stops being a simulator: a running episode is dropped and counted, with
        the steps of it no column holds yet (the caller holds the lock)."""
        if (peer.episode is not None and peer.episode.steps_taken) or peer.reported.steps_taken:
            self.dropped_episodes += 1
        peer.steps = []


def _token_ok(given: Any, token: str | None) -> bool:
    """Compares as bytes: compare_digest refuses non-ASCII strings with a TypeError."""
    return token is None or hmac.compare_digest(str(given or "").encode(), token.encode())


def await_declared_spaces(*, host: str, port: int, token: str | None, timeout_s: float,
                          check: Callable[[dict, dict], str | None], hello_timeout_s: float = 10.0) -> tuple[dict, dict]:
    """The spaces of the first simulator that says hello on ``host:port`` within
    ``timeout_s`` (``env_config`` without spaces). That simulator is told to ``reconnect``:
    the runners listen once the run has built its module from these spaces.
    ``check(observation_space, action_space)`` returns why schemas are unusable (that
    client gets an ``error``, the wait goes on) or None."""
    deadline = time.monotonic() + timeout_s
    with socket.create_server((host, port)) as listener:
        while (left := deadline - time.monotonic()) > 0:
            listener.settimeout(left)
            try:
                sock, _ = listener.accept()
            except socket.timeout:
                break
            with sock:
                sock.settimeout(min(hello_timeout_s, max(left, 0.1)))
                try:
                    conn = Connection(sock)
                    try:
                        message = conn.receive()
                        reason = _declared_spaces_error(message, token, check)
                    except ProtocolError as e:
                        reason = str(e)
                    except Exception as e:  # noqa: BLE001 - a schema the check chokes on refuses that client only
                        reason = f"hello: {type(e).__name__}: {e}"
                    if reason is not None:
                        conn.send({"type": "error", "message": reason})
                        continue
                    conn.send({"type": "reconnect", "after_s": 1.0,
                               "message": "the run took its spaces from this hello and is starting its runners"})
                    return message["observation_space"], message["action_space"]
                except (OSError, ConnectionError):
                    continue  # a client that went away or never spoke: wait for the next
    raise TimeoutError(f"no simulator said hello on {host}:{port} within {timeout_s:g} s to declare the spaces")


def _declared_spaces_error(message: dict[str, Any], token: str | None,
                           check: Callable[[dict, dict], str | None]) -> str | None:
    if message.get("type") != "hello":
        return f"the first message must be 'hello', got {message.get('type')!r}"
    if not _token_ok(message.get("token"), token):
        return "wrong or missing token"
    obs, act = message.get("observation_space"), message.get("action_space")
    if not isinstance(obs, dict) or not isinstance(act, dict):
        return "hello: this run takes its spaces from the first hello: send observation_space and action_space"
    return check(obs, act)

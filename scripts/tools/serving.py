"""What a served checkpoint answers (the model behind runtime/serving.py's routes).

``PolicyService`` serves a control policy on ``POST /act``; ``CompletionService`` an LM
checkpoint on ``POST /complete``. Both are stateless between requests (where an env
stacks frames, the client sends the stacked observation) and follow their checkpoint
file: ``reload()`` (``POST /reload``) and ``watch()`` (``--watch``) load a newer one, and a
batch in flight finishes on the weights it started with.

Request bodies:

    POST /act       {"obs": <one observation or a batch>, "explore": false, "details": false}
                    -> {"actions": ..., "weights_version": v, [details]}
                    a multi-agent checkpoint served whole (no --policy-id) needs
                    "policy_id": the policy that acts (``/metadata`` lists them and the
                    agent -> policy mapping the run trained with)
                    a policy with memory (``/metadata``'s "memory") takes the state:
                    "state": the opaque value the last reply gave (one per observation
                    of a batch; null or absent: an episode starts) and replies the next
                    one, stateless as ever; or "session": an id whose state this server
                    keeps (one observation a request, "reset": true at an episode start;
                    idle sessions expire after --session-ttl, at most --max-sessions;
                    one replica only, since a session's state lives in its replica)
    POST /complete  {"prompts": ["12+7=", ...]} or {"prompt": "12+7="}, "temperature": 0.0
                    -> {"completions": [...]} or {"completion": ...}, "weights_version": v
"""

from __future__ import annotations


import base64
import binascii
import logging
import os
import threading
import time
from typing import Any, Callable

import numpy as np
import tree

from rlfleet.rl.checkpoint import CheckpointError, checkpoint_stamp
from rlfleet.rl.config import closest
from rlfleet.rl.inference import Policy, parse_observations, to_json
from rlfleet.runtime.base import BadRequest

logger = logging.getLogger(__name__)


def _check_keys(body: Any, allowed: tuple[str, ...], required: tuple[str, ...], usage: str) -> None:
    if not isinstance(body, dict):
        raise BadRequest(f"body must be a JSON object: {usage}")
    for key in body:
        if key not in allowed:
            raise BadRequest(f"unknown key {key!r}{closest(key, allowed)}: {usage}")
    missing = [key for key in required if key not in body]
    if len(missing) == len(required):
        raise BadRequest(f"missing {' or '.join(repr(k) for k in required)}: {usage}")


def _flag(body: dict, key: str) -> bool:
    value = body.get(key, False)
    if not isinstance(value, bool):
        raise BadRequest(f"{key!r} must be true or false, got {value!r}")
    return value


class _Followed:
    """Holds what was loaded from a checkpoint file and loads it again when it changed.

    ``reload()`` is asked for (``POST /reload``) and says why it failed; ``poll()``
    (``--watch``) is not, and never fails: a file that is missing for a moment (a directory
    swapped for a new one), half-written (a copy in place) or corrupt is not a new version,
    so the loaded one goes on serving, and the next poll tries again once the file changed
    (the same bytes would fail the same way). A file that stays unloadable is logged once."""

    def __init__(self, checkpoint: str, load: Callable[[str], Any]) -> None:
        self.path = os.path.abspath(checkpoint)
        self.load = load
        self.lock = threading.Lock()
        try:
            self.stamp: tuple[int, ...] | None = checkpoint_stamp(self.path)
        except OSError:
            self.stamp = None
        self.current = load(self.path)
        self.failed: tuple[tuple[int, ...], str] | None = None  # (stamp, why) of the last failed poll
        self.reported: tuple[int, ...] | None = None  # the stamp whose failure was logged

    def reload(self) -> bool:
        with self.lock:
            try:
                stamp = checkpoint_stamp(self.path)
            except OSError as e:
                raise BadRequest(f"reload failed, still serving the loaded weights: {self.path}: {e.strerror}") from None
            try:
                loaded = self.load(self.path)
            except CheckpointError as e:
                raise BadRequest(f"reload failed, still serving the loaded weights: {e}") from None
            self._swap(loaded, stamp)
            return True

    def poll(self) -> bool:
        """Load the file if it changed since it was loaded; whether it did."""
        with self.lock:
            try:
                stamp = checkpoint_stamp(self.path)
            except OSError:
                return False
            if stamp == self.stamp:
                return False
            if self.failed is not None and self.failed[0] == stamp:
                if self.reported != stamp:
                    self.reported = stamp
                    logger.warning("--watch: %s does not load (%s); still serving the weights loaded before, "
                                   "trying again when the file changes", self.path, self.failed[1])
                return False
            try:
                loaded = self.load(self.path)
            except Exception as e:  # noqa: BLE001 - whatever a half-written file raises, it is not served
                self.failed = (stamp, (str(e).splitlines() or [type(e).__name__])[0])
                return False
            self._swap(loaded, stamp)
            return True

    def _swap(self, loaded: Any, stamp: tuple[int, ...]) -> None:
        self.current, self.stamp = loaded, stamp  # one assignment: a batch in flight keeps its reference
        self.failed = self.reported = None


class _FollowingService:
    """``POST /reload`` and ``--watch`` of a service whose weights come from a checkpoint."""

    followed: _Followed

    def reload(self) -> dict[str, Any]:
        changed = self.followed.reload()
        current = self.followed.current  # a policy service holds {policy id: policy}
        loaded = next(iter(current.values())) if isinstance(current, dict) else current
        return {"reloaded": changed, "weights_version": loaded.weights_version}

    def watch(self) -> None:
        """``--watch``: load the checkpoint file if it changed; never raises (see ``_Followed``)."""
        self.followed.poll()


def encode_state(state: np.ndarray) -> str:
    """A recurrent state (S,) as the opaque value a reply carries: base64 of float32 bytes
    (exact, and a third of the JSON of its numbers)."""
    return base64.b64encode(np.ascontiguousarray(state, "<f4").tobytes()).decode("ascii")


def decode_states(value: Any, rows: int, single: bool, size: int) -> np.ndarray:
    """The request's ``state``: one value (a single observation) or one per row, each null
    (an episode starts: zeros) or what a reply gave. (rows, size) float32."""
    values = [value] if single and not isinstance(value, list) else value
    if not isinstance(values, list) or len(values) != rows:
        raise BadRequest(f"state must be one value per observation ({rows}), each null or a reply's state")
    out = np.zeros((rows, size), np.float32)
    for i, v in enumerate(values):
        if v is None:
            continue
        try:
            decoded = np.frombuffer(base64.b64decode(v, validate=True), "<f4") if isinstance(v, str) else None
        except (binascii.Error, ValueError):
            decoded = None
        if decoded is None or decoded.size != size or not np.isfinite(decoded).all():
            raise BadRequest(f"state of observation {i} is not a state this policy replied (base64 of {size} "
                             "float32s); send null to start an episode")
        out[i] = decoded
    return out


class Sessions:
    """Recurrent states kept for clients that send a session id: at most ``limit``, each
    dropped ``ttl_s`` seconds after its last request."""

    def __init__(self, limit: int, ttl_s: float) -> None:
        self.limit, self.ttl_s = limit, ttl_s
        self.states: dict[str, tuple[np.ndarray, float]] = {}  # id -> (state (S,), last used)
        self.lock = threading.Lock()

    def _expire(self, now: float) -> None:
        for sid in [sid for sid, (_, used) in self.states.items() if now - used > self.ttl_s]:
            del self.states[sid]

    def admit(self, sid: str) -> None:
        """Refuse a new session when ``limit`` are open and none has expired."""
        with self.lock:
            now = time.monotonic()
            if sid in self.states:
                return
            self._expire(now)
            if len(self.states) >= self.limit:
                raise BadRequest(f"{len(self.states)} sessions are open, the limit (--max-sessions); one expires "
                                 f"{self.ttl_s:g} s after its last request, or send 'state' instead of 'session'")

    def get(self, sid: str, reset: bool, size: int) -> np.ndarray:
        with self.lock:
            kept = None if reset else self.states.get(sid)
            if kept is not None and time.monotonic() - kept[1] <= self.ttl_s:
                return kept[0]
            return np.zeros(size, np.float32)

    def put(self, sid: str, state: np.ndarray) -> None:
        with self.lock:
            self.states[sid] = (state.copy(), time.monotonic())


class PolicyService(_FollowingService):
    USAGE = ('{"obs": <observation or batch>, "explore": false, "details": false, '
             'with memory "state": <the last reply\'s> or "session": "<id>", "reset": false}')

    def __init__(self, checkpoint: str, *, max_batch_rows: int = 256, policy_id: str | None = None,
                 num_replicas: int = 1, max_sessions: int = 1024, session_ttl_s: float = 600.0) -> None:
        # {None: the one policy served} or, for a multi-agent checkpoint served whole, {policy id: policy}
        load = (Policy.load_all if policy_id is None
                else lambda path: {None: Policy.load(path, policy_id=policy_id)})
        self.followed = _Followed(checkpoint, load)
        self.max_batch_rows = max_batch_rows
        self.num_replicas = num_replicas
        self.sessions = Sessions(max_sessions, session_ttl_s)

    def _memory(self, body: dict, policy: Policy, rows: int, single: bool) -> tuple[np.ndarray | None, str | None]:
        """(the rows' states, the session id) of a request, checked."""
        given = [key for key in ("state", "session", "reset") if key in body]
        if not policy.state_size:
            if given:
                raise BadRequest(f"{given[0]!r}: this policy has no memory; send only the observation")
            return None, None
        if "session" not in body:
            if "reset" in body:
                raise BadRequest("'reset' goes with 'session'; without one, send \"state\": null to start an episode")
            return decode_states(body.get("state"), rows, single, policy.state_size), None
        sid, reset = body["session"], _flag(body, "reset")
        if "state" in body:
            raise BadRequest("give 'state' or 'session', not both")
        if not isinstance(sid, str) or not 0 < len(sid) <= 128:
            raise BadRequest(f"session must be an id of 1 to 128 characters, got {sid!r}")
        if not single:
            raise BadRequest("a session is one env: send one observation per request (or a batch with 'state')")
        if self.num_replicas > 1:
            raise BadRequest(f"sessions need one replica (a session's state lives in its replica), this server runs "
                             f"{self.num_replicas}: send 'state' with each request instead")
        self.sessions.admit(sid)
        return self.sessions.get(sid, reset, policy.state_size)[None], sid

    def _policy(self, body: dict) -> tuple[str | None, Policy]:
        policies, pid = self.followed.current, body.get("policy_id")
        if None in policies:
            served = policies[None].policy_id
            if pid is not None and pid != served:
                raise BadRequest(f"policy_id {pid!r}: this server serves "
                                 + (f"policy {served!r} only" if served else "a single-agent policy"))
            return None, policies[None]
        ids = sorted(policies)
        if pid is None:
            raise BadRequest(f"this checkpoint is multi-agent: name the policy that acts, \"policy_id\": one of "
                             f"{', '.join(ids)}")
        if not isinstance(pid, str) or pid not in policies:
            raise BadRequest(f"unknown policy_id {pid!r}{closest(str(pid), ids)} (policies: {', '.join(ids)})")
        return pid, policies[pid]

    def parse(self, route: str, body: Any) -> tuple[Any, int]:
        if route != "/act":
            raise BadRequest(f"this server serves a control policy: POST /act {self.USAGE}")
        _check_keys(body, ("obs", "explore", "details", "policy_id", "state", "session", "reset"), ("obs",), self.USAGE)
        pid, policy = self._policy(body)
        obs, single = parse_observations(body["obs"], policy.observation_space, policy.action_space,
                                         max_batch=self.max_batch_rows)
        rows = len(tree.flatten(obs)[0])
        states, session = self._memory(body, policy, rows, single)
        return (obs, single, _flag(body, "explore"), _flag(body, "details"), pid, policy, states, session), rows

    def run(self, route: str, items: list[tuple[Any, int]]) -> list[dict[str, Any]]:
        """One forward pass per policy and kind of request (greedy/explore, with/without
        details) for all the requests Serve batched together."""
        policies = self.followed.current  # one set of weights for the whole batch
        results: list[dict[str, Any] | None] = [None] * len(items)
        kinds: dict[tuple[str | None, bool, bool, bool], list[int]] = {}
        for i, ((_, _, explore, details, pid, _, states, _), _) in enumerate(items):
            kinds.setdefault((pid, explore, details, states is not None), []).append(i)
        for (pid, explore, details, memory), indices in kinds.items():
            # a reload between parse and run that took the policy away: the one it was parsed for
            policy = policies.get(pid) or items[indices[0]][0][5]
            if memory and not policy.state_size:  # reloaded into a policy without memory
                policy = items[indices[0]][0][5]
            parts = [items[i][0][0] for i in indices]
            obs = tree.map_structure(lambda *xs: np.concatenate(xs), *parts) if len(parts) > 1 else parts[0]
            state = np.concatenate([items[i][0][6] for i in indices]) if memory else None
            out = policy.act(obs, explore=explore, details=details, state=state)
            next_states = out.pop("state", None)
            start = 0
            for i in indices:
                rows, single, session = items[i][1], items[i][0][1], items[i][0][7]
                part = tree.map_structure(lambda x: x[start:start + rows], out)
                if single:
                    part = tree.map_structure(lambda x: x[0], part)
                results[i] = {**to_json(part), "weights_version": policy.weights_version}
                if session is not None:
                    self.sessions.put(session, next_states[start])
                    results[i]["session"] = session
                elif next_states is not None:
                    encoded = [encode_state(x) for x in next_states[start:start + rows]]
                    results[i]["state"] = encoded[0] if single else encoded
                start += rows
        return results  # type: ignore[return-value]

    def metadata(self) -> dict[str, Any]:
        policies = self.followed.current
        route = {"route": "POST /act", "max_batch_rows": self.max_batch_rows}
        if None in policies:
            return {**policies[None].metadata(), **route}
        per_policy = {pid: p.metadata() for pid, p in policies.items()}
        first = next(iter(per_policy.values()))
        own = ("observation_space", "action_space", "normalizes_observations", "policy_id")
        return {**{k: v for k, v in first.items() if k not in own},
                "policies": {pid: {k: m[k] for k in own[:3]} for pid, m in per_policy.items()},
                "policy_mapping": next(iter(policies.values())).policy_mapping, **route}


class CompletionService(_FollowingService):
    """An LM checkpoint behind ``POST /complete``; ``load(path)`` rebuilds its algorithm in
    this process (``from_checkpoint``), and completions are the same as its ``complete``."""

    USAGE = '{"prompts": ["12+7=", ...]} or {"prompt": "12+7="}, optional "temperature": 0.0'

    def __init__(self, checkpoint: str, load: Callable[[str], Any], *, max_batch_rows: int = 256) -> None:
        self.followed = _Followed(checkpoint, load)
        self.max_batch_rows = max_batch_rows

    def parse(self, route: str, body: Any) -> tuple[Any, int]:
        if route != "/complete":
            raise BadRequest(f"this server serves a language model: POST /complete {self.USAGE}")
        _check_keys(body, ("prompts", "prompt", "temperature"), ("prompts", "prompt"), self.USAGE)
        single = "prompt" in body
        prompts = [body["prompt"]] if single else body["prompts"]
        if "prompt" in body and "prompts" in body:
            raise BadRequest(f"give 'prompt' or 'prompts', not both: {self.USAGE}")
        if not isinstance(prompts, list) or not prompts or not all(isinstance(p, str) for p in prompts):
            raise BadRequest(f"prompts must be a non-empty list of strings: {self.USAGE}")
        if len(prompts) > self.max_batch_rows:
            raise BadRequest(f"batch of {len(prompts)} prompts is over the limit of {self.max_batch_rows}")
        temperature = body.get("temperature", 0.0)
        if isinstance(temperature, bool) or not isinstance(temperature, (int, float)) or not 0 <= temperature <= 10:
            raise BadRequest(f"temperature must be a number in [0, 10], got {temperature!r}")
        return (prompts, single, float(temperature)), len(prompts)

    def run(self, route: str, items: list[tuple[Any, int]]) -> list[dict[str, Any]]:
        """One generation per temperature for the prompts of all the batched requests."""
        algo = self.followed.current
        results: list[dict[str, Any]] = [{} for _ in items]
        by_temperature: dict[float, list[int]] = {}
        for i, ((_, _, temperature), _) in enumerate(items):
            by_temperature.setdefault(temperature, []).append(i)
        for temperature, indices in by_temperature.items():
            completions = algo.complete([p for i in indices for p in items[i][0][0]], temperature=temperature)
            for i in indices:
                prompts, single, _ = items[i][0]
                mine, completions = completions[:len(prompts)], completions[len(prompts):]
                results[i] = {"completion": mine[0]} if single else {"completions": mine}
                results[i]["weights_version"] = algo.weights_version
        return results

    def metadata(self) -> dict[str, Any]:
        algo = self.followed.current
        return {"algorithm": algo.config.algo_name, "env": str(algo.config.env), "weights_version": algo.weights_version,
                "env_steps": algo.env_steps, "checkpoint": self.followed.path, "route": "POST /complete",
                "max_batch_rows": self.max_batch_rows}


"""A policy with memory behind POST /act, in process (no Serve): the state as an opaque
value each reply carries and each request sends back, or kept per session id with a limit
and a TTL, refused with more than one replica; bad states get one line."""

from __future__ import annotations

import numpy as np
import pytest

from rlfleet.rl.inference import Policy
from rlfleet.runtime.base import BadRequest
from rlfleet.scripts.tools.serving import PolicyService


def act(service: PolicyService, body: dict) -> dict:
    item = service.parse("/act", body)
    return service.run("/act", [item])[0]


@pytest.fixture(scope="module")
def maze(checkpoints):
    return checkpoints("ppo-lstm-maze")


def maze_obs(policy: Policy, n: int, seed: int = 0) -> list[dict]:
    space = policy.observation_space
    space.seed(seed)
    out = []
    for _ in range(n):
        obs = space.sample()
        obs["action_mask"][0] = 1  # one legal action at least
        out.append({k: v.tolist() for k, v in obs.items()})
    return out


def batched(observations: list[dict]) -> dict:
    """A batch of Dict observations as /act takes it: each leaf a list of rows."""
    return {k: [o[k] for o in observations] for k in observations[0]}


def test_the_state_travels_with_each_reply_and_each_request_as_the_library_carries_it(maze):
    service, policy = PolicyService(maze), Policy.load(maze)
    assert service.metadata()["memory"] == {"kind": "lstm", "state_size": 32}
    state, carried = None, None
    for obs in maze_obs(policy, 6):
        reply = act(service, {"obs": obs, "state": state})
        batch = {k: np.asarray(v)[None] for k, v in obs.items()}
        ours = policy.act({**batch, "action_mask": batch["action_mask"].astype(np.int8)}, state=carried)
        assert reply["actions"] == int(ours["actions"][0])
        state, carried = reply["state"], ours["state"]
        assert isinstance(state, str)
        np.testing.assert_array_equal(np.frombuffer(__import__("base64").b64decode(state), "<f4"), carried[0])
    # a batch: one state per observation, null where an episode starts
    two = maze_obs(policy, 2, seed=1)
    reply = act(service, {"obs": batched(two), "state": [state, None]})
    assert len(reply["state"]) == 2 and reply["state"][0] != reply["state"][1]


@pytest.mark.parametrize("extra,message", [
    ({"state": "bm90IGEgc3RhdGU="}, "state of observation 0 is not a state this policy replied (base64 of 32 float32s)"),
    ({"state": "%%%"}, "state of observation 0 is not a state this policy replied"),
    ({"state": [None, None]}, "state must be one value per observation (1)"),
    ({"session": "a", "state": None}, "give 'state' or 'session', not both"),
    ({"session": ""}, "session must be an id of 1 to 128 characters"),
    ({"reset": True}, "'reset' goes with 'session'"),
])
def test_a_bad_state_or_session_is_one_line(maze, extra, message):
    service = PolicyService(maze)
    obs = maze_obs(Policy.load(maze), 1)[0]
    with pytest.raises(BadRequest) as e:
        service.parse("/act", {"obs": obs, **extra})
    assert message in str(e.value) and "\n" not in str(e.value)


def test_sessions_keep_each_clients_state_with_a_limit_and_a_ttl(maze, monkeypatch):
    service, policy = PolicyService(maze, max_sessions=2, session_ttl_s=60.0), Policy.load(maze)
    steps = maze_obs(policy, 4)
    # session "a" steps through 4 observations; its replies equal the stateless ones
    state = None
    for i, obs in enumerate(steps):
        kept = act(service, {"obs": obs, "session": "a", "reset": i == 0})
        free = act(service, {"obs": obs, "state": state})
        assert kept["actions"] == free["actions"] and kept["session"] == "a" and "state" not in kept
        state = free["state"]
    np.testing.assert_array_equal(service.sessions.states["a"][0],
                                  np.frombuffer(__import__("base64").b64decode(state), "<f4"))
    act(service, {"obs": steps[0], "session": "b"})
    with pytest.raises(BadRequest, match="2 sessions are open, the limit"):
        service.parse("/act", {"obs": steps[0], "session": "c"})
    clock = [1e9]  # after the TTL, the idle sessions make room
    monkeypatch.setattr("rlfleet.scripts.tools.serving.time.monotonic", lambda: clock[0])
    act(service, {"obs": steps[0], "session": "c"})
    assert sorted(service.sessions.states) == ["c"]
    with pytest.raises(BadRequest, match="a session is one env: send one observation"):
        service.parse("/act", {"obs": batched(steps[:2]), "session": "c"})


def test_sessions_are_refused_with_more_than_one_replica_and_stateless_requests_are_not(maze):
    service = PolicyService(maze, num_replicas=2)
    obs = maze_obs(Policy.load(maze), 1)[0]
    with pytest.raises(BadRequest, match="sessions need one replica .* this server runs 2: send 'state'"):
        service.parse("/act", {"obs": obs, "session": "a"})
    assert "state" in act(service, {"obs": obs})


def test_a_policy_without_memory_refuses_state(checkpoints):
    service = PolicyService(checkpoints("ppo-cartpole"))
    with pytest.raises(BadRequest, match="'state': this policy has no memory"):
        service.parse("/act", {"obs": [0.0, 0.0, 0.0, 0.0], "state": None})

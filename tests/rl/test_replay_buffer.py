"""Replay buffers: n-step targets by hand, restarts, frame stacks against gymnasium's own
FrameStackObservation, ring overwrite against a brute-force reference, prioritised
sampling and importance weights by hand."""

from __future__ import annotations

import gymnasium as gym
import numpy as np
import pytest
from gymnasium import spaces
from gymnasium.wrappers import FrameStackObservation

from rlfleet.rl.core import Fragment
from rlfleet.rl.replay import PrioritizedReplayBuffer, ReplayBuffer

ID_SPACE = spaces.Box(-np.inf, np.inf, (1,), np.float32)  # each obs is a unique id
ACT_SPACE = spaces.Discrete(2)


def make_fragment(obs, rewards, *, terminated=(), truncated=(), is_first=(), final_obs=(), actions=None,
                  runner_index=0) -> Fragment:
    """(T, B) fragment; flags given as (t, b) lists, obs as a (T, B, ...) array or nested dict."""
    rewards = np.asarray(rewards, np.float32)
    T, B = rewards.shape

    def flags(cells):
        out = np.zeros((T, B), bool)
        for t, b in cells:
            out[t, b] = True
        return out

    batch = {
        "obs": obs,
        "actions": actions if actions is not None else [np.zeros((T, B), np.int64)],
        "rewards": rewards,
        "terminated": flags(terminated),
        "truncated": flags(truncated),
        "is_first": flags(is_first),
    }
    return Fragment(batch, [], [], T * B, 0, runner_index, final_obs=list(final_obs))


def ids(*columns) -> np.ndarray:
    """Observation ids, one column per env: (T, B, 1) float32."""
    return np.array(columns, np.float32).T[:, :, None]


def draw_all(buf: ReplayBuffer, draws: int = 4000) -> dict[float, tuple]:
    """Sample often enough to see every sampleable transition; key them by obs id and check
    that every draw of one transition returns the same target."""
    batch = buf.sample(draws)
    out: dict[float, tuple] = {}
    for i in range(draws):
        key = float(batch["obs"][i, 0])
        row = (float(batch["rewards"][i]), float(batch["discounts"][i]), float(batch["next_obs"][i, 0]))
        assert out.setdefault(key, row) == row
    return out


def without_next_obs_if_terminal(table: dict[float, tuple]) -> dict[float, tuple]:
    # After a termination next_obs is unused (discount 0), so it is not part of the target.
    return {k: (r, d, None if d == 0 else nxt) for k, (r, d, nxt) in table.items()}


# -- n-step targets by hand -------------------------------------------------------------------


def two_runner_buffer(n_step: int) -> ReplayBuffer:
    """Runner 0 (streams 0, 1) and runner 1 (streams 2, 3), gamma 0.5.

    stream 0: ids 0..5, r 1 2 4 8 16 32, terminated at step 2, truncated at step 4 (final
              obs 99), episodes start at 0, 3, 5; then ids 6 7 8, r 64 128 256.
    stream 1: ids 10..15, r all 1, one episode; then ids 16 17 18, r 2 4 8, terminated at
              step 7 (id 17), a new episode at step 8.
    runner 1 interleaves big rewards on ids 500+; it must never leak into runner 0's windows.
    """
    buf = ReplayBuffer(400, ID_SPACE, ACT_SPACE, num_streams=4, n_step=n_step, gamma=0.5)
    buf.add(make_fragment(ids([0, 1, 2, 3, 4, 5], [10, 11, 12, 13, 14, 15]),
                          np.array([[1, 2, 4, 8, 16, 32], [1] * 6]).T,
                          terminated=[(2, 0)], truncated=[(4, 0)], final_obs=[(4, 0, np.array([99.0]))],
                          is_first=[(0, 0), (3, 0), (5, 0), (0, 1)]))
    buf.add(make_fragment(ids([500, 501, 502, 503], [600, 601, 602, 603]), np.full((4, 2), 1000.0),
                          is_first=[(0, 0), (0, 1)], runner_index=1))
    buf.add(make_fragment(ids([6, 7, 8], [16, 17, 18]), np.array([[64, 128, 256], [2, 4, 8]]).T,
                          terminated=[(1, 1)], is_first=[(2, 1)]))
    return buf


def test_three_step_targets_across_ends_streams_and_fragment_boundaries():
    buf = two_runner_buffer(n_step=3)
    got = without_next_obs_if_terminal({k: v for k, v in draw_all(buf).items() if k < 500})
    want = {
        # stream 0, ending by termination: no bootstrap
        0: (1 + .5 * 2 + .25 * 4, 0.0, None),  # 3
        1: (2 + .5 * 4, 0.0, None),  # 4
        2: (4.0, 0.0, None),
        # truncated at id 4: bootstrap from the final obs 99 with gamma^(m+1)
        3: (8 + .5 * 16, .25, 99.0),  # 16
        4: (16.0, .5, 99.0),
        # window crosses into the second fragment: 32 + .5*64 + .25*128, next obs id 8
        5: (96.0, .125, 8.0),
        # stream 1: no end in the window, bootstrap gamma^3 from 3 steps ahead
        10: (1.75, .125, 13.0),
        11: (1.75, .125, 14.0),
        12: (1.75, .125, 15.0),
        13: (1.75, .125, 16.0),  # ids 13, 14, 15 waited for the second fragment
        14: (1 + .5 + .25 * 2, .125, 17.0),  # 2
        15: (1 + .5 * 2 + .25 * 4, 0.0, None),  # 3: terminated at id 17
        16: (2 + .5 * 4, 0.0, None),  # 4
        17: (4.0, 0.0, None),
        # ids 6, 7, 8 and 18 wait for steps not yet sent
    }
    assert got == want
    # runner 1's slots: 500 and 600 only (each needs 3 steps ahead; 4 were sent)
    assert sorted(k for k in draw_all(buf) if k >= 500) == [500.0, 600.0]
    assert len(buf) == len(want) + 2


def test_one_step_targets():
    buf = two_runner_buffer(n_step=1)
    got = without_next_obs_if_terminal({k: v for k, v in draw_all(buf).items() if k < 500})
    want = {
        0: (1.0, .5, 1.0), 1: (2.0, .5, 2.0), 2: (4.0, 0.0, None), 3: (8.0, .5, 4.0),
        4: (16.0, .5, 99.0), 5: (32.0, .5, 6.0), 6: (64.0, .5, 7.0), 7: (128.0, .5, 8.0),
        10: (1.0, .5, 11.0), 11: (1.0, .5, 12.0), 12: (1.0, .5, 13.0), 13: (1.0, .5, 14.0),
        14: (1.0, .5, 15.0), 15: (1.0, .5, 16.0), 16: (2.0, .5, 17.0), 17: (4.0, 0.0, None),
    }
    assert got == want


def test_actions_and_rows_belong_to_the_same_step():
    buf = ReplayBuffer(64, ID_SPACE, spaces.Discrete(50), num_streams=2, n_step=2, gamma=0.5)
    actions = [np.array([[3, 4, 5, 6], [13, 14, 15, 16]]).T.astype(np.int64)]
    buf.add(make_fragment(ids([3, 4, 5, 6], [13, 14, 15, 16]), np.ones((4, 2)), actions=actions,
                          is_first=[(0, 0), (0, 1)]))
    batch = buf.sample(256)
    np.testing.assert_array_equal(batch["actions"][0], batch["obs"][:, 0].astype(np.int64))
    assert batch["actions"][0].dtype == np.int64
    assert batch["rewards"].dtype == batch["discounts"].dtype == batch["weights"].dtype == np.float32
    assert batch["indices"].dtype == np.int64
    np.testing.assert_array_equal(batch["weights"], 1.0)


# -- restarted runners ------------------------------------------------------------------------


@pytest.mark.parametrize("cls", [ReplayBuffer, PrioritizedReplayBuffer])
def test_a_restart_without_episode_end_is_never_sampled(cls):
    # n = 2. Both envs of runner 0 restart after 4 steps (is_first at the next obs[0]);
    # env 1 happened to be truncated on its last step before the restart, env 0 was not.
    buf = cls(64, ID_SPACE, ACT_SPACE, num_streams=2, n_step=2, gamma=0.5)
    buf.add(make_fragment(ids([0, 1, 2, 3], [10, 11, 12, 13]), np.ones((4, 2)),
                          truncated=[(3, 1)], final_obs=[(3, 1, np.array([19.0]))], is_first=[(0, 0), (0, 1)]))
    assert set(draw_all(buf)) == {0, 1, 10, 11, 12, 13}  # 12, 13 end inside the window
    buf.add(make_fragment(ids([4, 5, 6, 7], [20, 21, 22, 23]), np.ones((4, 2)), is_first=[(0, 0), (0, 1)]))
    # ids 2 and 3 would bootstrap across the restart into an unrelated episode: never drawn
    assert set(draw_all(buf)) == {0, 1, 4, 5, 10, 11, 12, 13, 20, 21}
    assert len(buf) == 10
    buf.add(make_fragment(ids([8, 9], [24, 25]), np.ones((2, 2))))
    # the new episode's last two steps completed their windows; 2 and 3 stay out for good
    assert set(draw_all(buf)) == {0, 1, 4, 5, 6, 7, 10, 11, 12, 13, 20, 21, 22, 23}
    assert len(buf) == 14


# -- frame stacking against gymnasium's FrameStackObservation -----------------------------------


class FrameEnv(gym.Env):
    """Emits distinct uint8 frames [[stream, episode, t], [t * 7 % 256, 1, 2]] and ends its
    episodes after 1, 2, 5, 3, 7, 4 ... steps, by termination and truncation in turn."""

    observation_space = spaces.Box(0, 255, (2, 3), np.uint8)
    action_space = spaces.Discrete(2)
    lengths = (1, 2, 5, 3, 7, 4, 6)

    def __init__(self, stream: int) -> None:
        self.stream, self.episode, self.t = stream, -1, 0

    def _frame(self) -> np.ndarray:
        return np.array([[self.stream, self.episode, self.t], [self.t * 7 % 256, 1, 2]], np.uint8)

    def reset(self, *, seed=None, options=None):
        super().reset(seed=seed)
        self.episode, self.t = self.episode + 1, 0
        return self._frame(), {}

    def step(self, action):
        self.t += 1
        done = self.t >= self.lengths[self.episode % len(self.lengths)]
        terminated = done and self.episode % 2 == 0
        return self._frame(), float(self.t + 10 * self.stream), terminated, done and not terminated, {}


def record(num_envs: int, steps: int, frame_stack: int) -> list[dict]:
    """Run ``num_envs`` FrameEnvs (stacked by gymnasium when frame_stack > 1), resetting on
    every end, and record what an env runner sees: per env, per step."""
    records = []
    for b in range(num_envs):
        env = FrameStackObservation(FrameEnv(b), frame_stack, padding_type="reset") if frame_stack > 1 else FrameEnv(b)
        obs, _ = env.reset(seed=b)
        rec = {k: [] for k in ("obs", "rewards", "terminated", "truncated", "is_first", "final")}
        first = True
        for _ in range(steps):
            rec["obs"].append(np.asarray(obs))
            rec["is_first"].append(first)
            obs, r, term, trunc, _ = env.step(0)
            rec["rewards"].append(r)
            rec["terminated"].append(term)
            rec["truncated"].append(trunc)
            rec["final"].append(np.asarray(obs) if trunc and not term else None)
            first = term or trunc
            if first:
                obs, _ = env.reset()
        records.append(rec)
    return records


def fragments(records: list[dict], T: int, runner_index: int = 0) -> list[Fragment]:
    steps = len(records[0]["obs"])
    out = []
    for t0 in range(0, steps, T):
        sl = slice(t0, t0 + T)
        col = lambda key, dtype=None: np.stack([np.asarray(r[key][sl], dtype) for r in records], axis=1)
        finals = [(t - t0, b, r["final"][t]) for b, r in enumerate(records) for t in range(t0, min(t0 + T, steps))
                  if r["final"][t] is not None]
        frag = make_fragment(col("obs"), col("rewards", np.float32), final_obs=finals, runner_index=runner_index,
                             actions=[np.zeros((min(T, steps - t0), len(records)), np.int64)])
        for key in ("terminated", "truncated", "is_first"):
            frag.batch[key] = col(key, bool)
        out.append(frag)
    return out


def reference(rec: dict, slots: int, n: int, gamma: float, k: int) -> dict[bytes, tuple]:
    """Brute force, step by step, over one recorded stream: every transition the buffer may
    sample, keyed by the newest frame of its obs, with (obs, reward, discount, next_obs)."""
    c = len(rec["obs"])
    oldest = c - slots
    since_first, out = [], {}
    for a in range(c):
        since_first.append(0 if rec["is_first"][a] else since_first[-1] + 1)
    for a in range(max(0, oldest), c):
        if a - min(k - 1, since_first[a]) < oldest:
            continue  # the stack reaches frames the ring has overwritten
        ret, target = 0.0, None
        for i in range(n):
            if i > 0 and (a + i >= c or rec["is_first"][a + i]):
                break  # window not yet written, or a restart: not sampleable
            ret += gamma**i * rec["rewards"][a + i]
            if rec["terminated"][a + i]:
                target = (ret, 0.0, None)
                break
            if rec["truncated"][a + i]:
                target = (ret, gamma ** (i + 1), rec["final"][a + i])
                break
        else:
            if a + n < c and not rec["is_first"][a + n]:
                target = (ret, gamma**n, rec["obs"][a + n])
        if target is not None:
            newest = rec["obs"][a][-1] if k > 1 else rec["obs"][a]
            out[newest.tobytes()] = (rec["obs"][a], *target)
    return out


def check_against_reference(buf: ReplayBuffer, records: list[dict], slots: int, n: int, gamma: float, k: int):
    want = {}
    for rec in records:
        want.update(reference(rec, slots, n, gamma, k))
    assert len(buf) == len(want)
    batch = buf.sample(20 * len(want))
    assert batch["obs"].dtype == batch["next_obs"].dtype == np.uint8
    seen = set()
    for i in range(len(batch["rewards"])):
        key = (batch["obs"][i][-1] if k > 1 else batch["obs"][i]).tobytes()
        obs, ret, disc, next_obs = want[key]
        np.testing.assert_array_equal(batch["obs"][i], obs)
        assert batch["rewards"][i] == pytest.approx(ret)
        assert batch["discounts"][i] == pytest.approx(disc)
        if disc != 0:
            np.testing.assert_array_equal(batch["next_obs"][i], next_obs)
        seen.add(key)
    assert seen == set(want)


def test_frame_stacks_match_gymnasium_frame_stack_observation():
    k, n, gamma = 4, 3, 0.5
    records = record(num_envs=2, steps=40, frame_stack=k)
    buf = ReplayBuffer(2 * 100, FrameEnv.observation_space, ACT_SPACE, num_streams=2, n_step=n, gamma=gamma,
                       frame_stack=k)
    for frag in fragments(records, T=7):
        buf.add(frag)
    check_against_reference(buf, records, slots=100, n=n, gamma=gamma, k=k)


@pytest.mark.parametrize("frame_stack", [1, 4])
@pytest.mark.parametrize("cls", [ReplayBuffer, PrioritizedReplayBuffer])
def test_ring_overwrite_keeps_transitions_consistent(cls, frame_stack):
    # 12 slots per stream, 70 steps in fragments of 5: the rings wrap five times over.
    n, gamma, slots = 3, 0.5, 12
    records = record(num_envs=2, steps=70, frame_stack=frame_stack)
    buf = cls(2 * slots, FrameEnv.observation_space, ACT_SPACE, num_streams=2, n_step=n, gamma=gamma,
              frame_stack=frame_stack)
    for i, frag in enumerate(fragments(records, T=5)):
        buf.add(frag)
        seen = [{k: v[: 5 * (i + 1)] for k, v in rec.items()} for rec in records]
        if i >= 2:
            check_against_reference(buf, seen, slots=slots, n=n, gamma=gamma, k=frame_stack)
    # Only truncations still in the rings keep their final obs (private store, checked for leaks).
    kept = sum(r["final"][a] is not None for r in records for a in range(70 - slots, 70))
    assert len(buf._final_obs) == kept


def test_a_fragment_longer_than_the_ring_keeps_its_newest_steps():
    records = record(num_envs=1, steps=30, frame_stack=4)
    buf = ReplayBuffer(10, FrameEnv.observation_space, ACT_SPACE, num_streams=1, n_step=2, gamma=0.5, frame_stack=4)
    buf.add(fragments(records, T=30)[0])
    check_against_reference(buf, records, slots=10, n=2, gamma=0.5, k=4)


def test_frame_stacking_stores_one_frame_per_step():
    frame = spaces.Box(0, 255, (84, 84), np.uint8)
    stacked = spaces.Box(0, 255, (4, 84, 84), np.uint8)
    one = ReplayBuffer(1000, frame, ACT_SPACE, num_streams=2, frame_stack=4).memory_bytes()
    four = ReplayBuffer(1000, stacked, ACT_SPACE, num_streams=2).memory_bytes()
    assert 1000 * 84 * 84 < one < 1.01 * 1000 * 84 * 84
    assert one / four == pytest.approx(0.25, abs=0.005)


def test_frame_stacking_refuses_nested_observations():
    space = spaces.Dict({"a": spaces.Box(0, 255, (8, 8), np.uint8), "b": spaces.Box(0, 1, (2,))})
    with pytest.raises(ValueError, match="single Box"):
        ReplayBuffer(100, space, ACT_SPACE, num_streams=1, frame_stack=4)


# -- dtypes and nested spaces -------------------------------------------------------------------


def test_nested_dict_observations_and_actions_keep_their_dtypes():
    obs_space = spaces.Dict({
        "pos": spaces.Box(-1, 1, (2,), np.float32),
        "img": spaces.Box(0, 255, (3, 3), np.uint8),
        "mode": spaces.Discrete(300),
    })
    act_space = spaces.Tuple((spaces.Discrete(3), spaces.Box(-1, 1, (2,), np.float32)))
    T, B = 4, 2
    step_id = np.arange(T * B).reshape(T, B) + 200  # 200..207, distinct per (t, b)
    obs = {
        "img": np.broadcast_to(step_id[:, :, None, None], (T, B, 3, 3)).astype(np.uint8),
        "mode": step_id.astype(np.int64),
        "pos": np.stack([step_id / 1000, -step_id / 1000], axis=-1).astype(np.float32),
    }
    final = {"img": np.full((3, 3), 250, np.uint8), "mode": np.int64(250), "pos": np.array([.25, -.25], np.float32)}
    actions = [step_id.astype(np.int64) % 3, np.stack([step_id, step_id], -1).astype(np.float32)]
    buf = ReplayBuffer(40, obs_space, act_space, num_streams=B, n_step=1, gamma=0.5)
    assert [a.dtype for a in buf._obs] == [np.uint8, np.int64, np.float32]  # storage: img, mode, pos
    buf.add(make_fragment(obs, np.ones((T, B)), actions=actions, is_first=[(0, 0), (0, 1)],
                          truncated=[(1, 1)], final_obs=[(1, 1, final)]))
    batch = buf.sample(200)
    o, nxt = batch["obs"], batch["next_obs"]
    assert set(o) == {"pos", "img", "mode"}
    assert (o["img"].dtype, o["mode"].dtype, o["pos"].dtype) == (np.uint8, np.int64, np.float32)
    assert o["img"].shape == (200, 3, 3) and nxt["img"].dtype == np.uint8
    sid = o["mode"]
    np.testing.assert_array_equal(o["img"][:, 0, 0], sid)
    np.testing.assert_allclose(o["pos"][:, 0], sid / 1000, rtol=1e-6)
    np.testing.assert_array_equal(batch["actions"][0], sid % 3)
    np.testing.assert_array_equal(batch["actions"][1][:, 1], sid)
    cut = sid == 203  # (t=1, b=1): truncated, its next obs is the nested final obs
    assert cut.any()
    np.testing.assert_array_equal(nxt["mode"], np.where(cut, 250, sid + B))
    np.testing.assert_array_equal(nxt["img"][:, 2, 2], np.where(cut, 250, sid + B))
    np.testing.assert_allclose(nxt["pos"][cut], [[.25, -.25]] * cut.sum())


# -- bad input ------------------------------------------------------------------------------------


def test_bad_fragments_are_refused_and_leave_the_buffer_unchanged():
    buf = ReplayBuffer(64, ID_SPACE, ACT_SPACE, num_streams=2, n_step=1)
    buf.add(make_fragment(ids([0, 1, 2], [10, 11, 12]), np.ones((3, 2)), is_first=[(0, 0), (0, 1)]))
    before = (len(buf), buf._count.copy())
    with pytest.raises(ValueError, match="no observation for it"):
        buf.add(make_fragment(ids([3, 4], [13, 14]), np.ones((2, 2)), truncated=[(1, 0)]))
    with pytest.raises(ValueError, match="num_streams=2"):
        buf.add(make_fragment(ids([3, 4], [13, 14]), np.ones((2, 2)), runner_index=1))
    with pytest.raises(ValueError, match="shape"):
        buf.add(make_fragment(np.zeros((2, 2, 3), np.float32), np.ones((2, 2))))
    with pytest.raises(ValueError, match="is_first"):
        ReplayBuffer(64, ID_SPACE, ACT_SPACE, num_streams=2).add(make_fragment(ids([0], [1]), np.ones((1, 2))))
    assert (len(buf), buf._count.tolist()) == (before[0], before[1].tolist())
    with pytest.raises(ValueError, match="slots per stream"):
        ReplayBuffer(7, ID_SPACE, ACT_SPACE, num_streams=2, n_step=3)
    with pytest.raises(ValueError, match="no transition is sampleable"):
        ReplayBuffer(64, ID_SPACE, ACT_SPACE, num_streams=2).sample(4)


# -- prioritised replay ---------------------------------------------------------------------------


def four_slot_buffer(**kwargs) -> tuple[PrioritizedReplayBuffer, dict[float, int]]:
    """One stream, n = 1: ids 0..4 sent, ids 0..3 sampleable. Returns the id -> index map."""
    buf = PrioritizedReplayBuffer(16, ID_SPACE, ACT_SPACE, num_streams=1, n_step=1, gamma=0.5, **kwargs)
    buf.add(make_fragment(ids([0, 1, 2, 3, 4]), np.ones((5, 1)), is_first=[(0, 0)]))
    batch = buf.sample(400)
    index = dict(zip(batch["obs"][:, 0].tolist(), batch["indices"].tolist()))
    assert sorted(index) == [0, 1, 2, 3]
    return buf, index


def frequencies(buf: ReplayBuffer, draws: int, keys: list[float]) -> np.ndarray:
    got = np.concatenate([buf.sample(64)["obs"][:, 0] for _ in range(draws // 64)])
    return np.array([(got == k).mean() for k in keys])


def assert_proportions(freq: np.ndarray, expected: np.ndarray, draws: int) -> None:
    sigma = np.sqrt(expected * (1 - expected) / draws)
    assert np.all(np.abs(freq - expected) <= 5 * sigma), (freq, expected)


def test_new_slots_start_equal_then_follow_p_to_the_alpha():
    buf, index = four_slot_buffer(alpha=0.5, eps=1e-6, seed=3)
    draws = 64 * 300
    assert_proportions(frequencies(buf, draws, [0, 1, 2, 3]), np.full(4, 0.25), draws)
    # priorities p = 1, 2, 3, 4 -> p^0.5 = 1, 1.414, 1.732, 2 over a total of 6.146
    td = np.array([1.0, -2.0, 3.0, 4.0])  # p = |td| + eps: a negative error counts by its size
    buf.update_priorities(np.array([index[i] for i in range(4)]), td - 1e-6 * np.sign(td))
    expected = np.array([1.0, 1.41421356, 1.73205081, 2.0]) / 6.14626437
    assert_proportions(frequencies(buf, draws, [0, 1, 2, 3]), expected, draws)
    # a second update moves the mass again: id 0 now dominates (p 100 -> 10 of 15.15)
    buf.update_priorities(np.array([index[0]]), np.array([100.0 - 1e-6]))
    expected = np.array([10.0, 1.41421356, 1.73205081, 2.0]) / 15.14626437
    assert_proportions(frequencies(buf, draws, [0, 1, 2, 3]), expected, draws)


def test_importance_weights_by_hand_and_max_priority_for_new_slots():
    buf, index = four_slot_buffer(alpha=0.5, beta=0.4, eps=1e-6)
    buf.update_priorities(np.array([index[i] for i in range(4)]), np.array([1.0, 2.0, 3.0, 4.0]) - 1e-6)
    # w_i = (N P_i)^-beta / max_j w_j = (p_i^alpha / p_min^alpha)^-beta with p = 1, 2, 3, 4:
    # 1, 2^-0.2, 3^-0.2, 4^-0.2
    want = {0: 1.0, 1: 0.87055056, 2: 0.80274156, 3: 0.75785828}
    batch = buf.sample(400)
    for obs_id, w in zip(batch["obs"][:, 0], batch["weights"]):
        assert w == pytest.approx(want[obs_id], rel=1e-5)
    # beta is annealed by the caller: at beta 1 the weights are p_min^alpha / p_i^alpha
    buf.beta = 1.0
    batch = buf.sample(400)
    np.testing.assert_allclose(batch["weights"], 1.0 / np.sqrt(batch["obs"][:, 0] + 1), rtol=1e-5)
    # id 4's window completes now; ids 5.. arrive: all enter with the max priority seen, 4
    buf.beta = 0.4
    buf.add(make_fragment(ids([5, 6]), np.ones((2, 1))))
    batch = buf.sample(2000)
    new = batch["obs"][:, 0] >= 4
    assert set(batch["obs"][new, 0].tolist()) == {4.0, 5.0}
    np.testing.assert_allclose(batch["weights"][new], 0.75785828, rtol=1e-5)


def test_updates_for_overwritten_slots_are_ignored():
    buf = PrioritizedReplayBuffer(8, ID_SPACE, ACT_SPACE, num_streams=1, n_step=1, seed=1)
    buf.add(make_fragment(ids([0, 1, 2, 3, 4, 5, 6, 7]), np.ones((8, 1)), is_first=[(0, 0)]))
    stale = buf.sample(1)["indices"]  # one slot: had it been updated, its weight would differ
    buf.add(make_fragment(ids([8, 9, 10, 11, 12, 13, 14, 15]), np.ones((8, 1))))
    buf.update_priorities(stale, np.array([50.0]))
    batch = buf.sample(256)
    assert batch["obs"][:, 0].min() >= 8
    np.testing.assert_array_equal(batch["weights"], 1.0)  # every priority still the initial max, 1
    with pytest.raises(ValueError, match="NaN"):
        buf.update_priorities(batch["indices"][:1], np.array([np.nan]))

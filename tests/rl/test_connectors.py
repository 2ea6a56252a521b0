import numpy as np
from gymnasium import spaces

from rlfleet.rl.connectors import MeanStdFilter, RewardNormalizer, RunningStats

EPS = 1e-8  # RunningStats.std adds it


def vec_space(d: int = 3) -> spaces.Box:
    return spaces.Box(-np.inf, np.inf, (d,), np.float32)


def data(seed: int, n: int, d: int = 3) -> np.ndarray:
    rng = np.random.default_rng(seed)
    return (rng.normal(size=(n, d)) * [1.0, 5.0, 0.1] + [0.0, 3.0, -2.0]).astype(np.float32)


# --- RunningStats -------------------------------------------------------------------------


def test_running_stats_hand_computed():
    # [1, 3] then [5]: mean 3, population variance ((-2)^2 + 0 + 2^2) / 3 = 8/3
    rs = RunningStats(())
    rs.update(np.array([1.0, 3.0]))
    rs.update(np.array([5.0]))
    assert rs.count == 3
    np.testing.assert_allclose(rs.mean, 3.0)
    np.testing.assert_allclose(rs.std, np.sqrt(8.0 / 3.0) + EPS)


def test_running_stats_over_several_batches_equals_numpy():
    batches = [data(0, 5), data(1, 1), data(2, 12), data(3, 7)]
    rs = RunningStats((3,))
    for x in batches:
        rs.update(x)
    everything = np.concatenate(batches).astype(np.float64)
    assert rs.count == 25
    np.testing.assert_allclose(rs.mean, everything.mean(0), rtol=1e-6)
    np.testing.assert_allclose(rs.m2 / rs.count, everything.var(0), rtol=1e-5)
    np.testing.assert_allclose(rs.std, everything.std(0) + EPS, rtol=1e-5)


def test_running_stats_multidimensional_leaf():
    rng = np.random.default_rng(4)
    batches = [rng.normal(size=(n, 2, 3)) for n in (4, 9)]
    rs = RunningStats((2, 3))
    for x in batches:
        rs.update(x)
    everything = np.concatenate(batches)
    np.testing.assert_allclose(rs.mean, everything.mean(0))
    np.testing.assert_allclose(rs.std, everything.std(0) + EPS)


def test_running_stats_state_load_round_trip_is_a_copy():
    rs = RunningStats((3,))
    rs.update(data(0, 10))
    other = RunningStats((3,))
    other.load(rs.state())
    rs.update(data(1, 10))  # must not leak into the loaded copy
    assert other.count == 10
    np.testing.assert_allclose(other.mean, data(0, 10).astype(np.float64).mean(0), rtol=1e-6)


# --- MeanStdFilter ------------------------------------------------------------------------


def test_filter_normalises_with_stats_that_include_the_batch():
    x = data(0, 50)
    f = MeanStdFilter(vec_space())
    out = f(x)
    ref = (x.astype(np.float64) - x.mean(0, dtype=np.float64)) / (x.std(0, dtype=np.float64) + EPS)
    assert out.dtype == np.float32
    np.testing.assert_allclose(out, ref, rtol=1e-4, atol=1e-5)
    np.testing.assert_allclose(out.mean(0), 0.0, atol=1e-5)
    np.testing.assert_allclose(out.std(0), 1.0, rtol=1e-4)


def test_filter_without_update_leaves_stats_alone():
    f = MeanStdFilter(vec_space())
    f(data(0, 50))
    before = f.pop_delta()
    f2 = MeanStdFilter(vec_space())
    f2(data(0, 50))
    f2(data(1, 50), update=False)
    after = f2.pop_delta()
    assert after[0]["count"] == before[0]["count"] == 50
    np.testing.assert_allclose(after[0]["mean"], before[0]["mean"])


def test_filter_clips_to_plus_minus_clip():
    f = MeanStdFilter(vec_space(1), clip=2.0)
    f(np.array([[-1.0], [1.0]] * 10, np.float32))  # mean 0, std 1
    out = f(np.array([[100.0], [-100.0], [0.5]], np.float32), update=False)
    np.testing.assert_allclose(out[:, 0], [2.0, -2.0, 0.5], rtol=1e-6)


def test_filter_passes_non_float_leaves_through_untouched():
    space = spaces.Dict(
        {
            "pos": spaces.Box(-10.0, 10.0, (2,), np.float32),
            "mode": spaces.Discrete(3),
            "img": spaces.Box(0, 255, (2, 2, 1), np.uint8),
        }
    )
    f = MeanStdFilter(space)
    rng = np.random.default_rng(0)
    obs = {
        "pos": rng.normal(3.0, 2.0, size=(20, 2)).astype(np.float32),
        "mode": rng.integers(0, 3, size=20),
        "img": rng.integers(0, 256, size=(20, 2, 2, 1)).astype(np.uint8),
    }
    out = f(obs)
    assert set(out) == {"pos", "mode", "img"}
    assert out["mode"].dtype == obs["mode"].dtype
    np.testing.assert_array_equal(out["mode"], obs["mode"])
    assert out["img"].dtype == np.uint8
    np.testing.assert_array_equal(out["img"], obs["img"])
    np.testing.assert_allclose(out["pos"].mean(0), 0.0, atol=1e-5)
    np.testing.assert_allclose(out["pos"].std(0), 1.0, rtol=1e-4)
    # Only the float leaf carries statistics (dm-tree order: img, mode, pos).
    state = f.pop_delta()
    assert state[0] is None and state[1] is None and state[2]["count"] == 20


def test_pop_delta_and_merge_equal_one_filter_that_saw_everything():
    space = vec_space()
    a1, a2, b1 = data(0, 30), data(1, 7), data(2, 45)
    runner_a, runner_b = MeanStdFilter(space), MeanStdFilter(space)
    runner_a(a1)
    runner_a(a2)
    runner_b(b1)
    driver = MeanStdFilter(space)
    driver.merge_deltas([runner_a.pop_delta(), runner_b.pop_delta()])

    one = MeanStdFilter(space)
    for x in (a1, b1, a2):
        one(x)
    probe = data(9, 5)
    np.testing.assert_allclose(driver(probe, update=False), one(probe, update=False), rtol=1e-5, atol=1e-6)
    everything = np.concatenate([a1, a2, b1]).astype(np.float64)
    [merged] = driver.get_state()
    assert merged["count"] == 82
    np.testing.assert_allclose(merged["mean"], everything.mean(0), rtol=1e-6)
    np.testing.assert_allclose(merged["m2"] / merged["count"], everything.var(0), rtol=1e-5)


def test_pop_delta_resets_so_a_second_sync_does_not_double_count():
    space = vec_space()
    runner, driver = MeanStdFilter(space), MeanStdFilter(space)
    x1, x2 = data(0, 20), data(1, 10)
    runner(x1)
    driver.merge_deltas([runner.pop_delta()])
    runner.set_state(driver.get_state())
    assert runner.pop_delta()[0]["count"] == 0  # nothing new since the sync
    runner(x2)
    driver.merge_deltas([runner.pop_delta()])
    runner.set_state(driver.get_state())
    everything = np.concatenate([x1, x2]).astype(np.float64)
    [state] = driver.get_state()
    assert state["count"] == 30
    np.testing.assert_allclose(state["mean"], everything.mean(0), rtol=1e-6)
    # The runner now normalises exactly as the driver does.
    probe = data(9, 4)
    np.testing.assert_allclose(runner(probe, update=False), driver(probe, update=False))


def test_get_state_set_state_round_trip():
    space = spaces.Dict({"pos": vec_space(), "mode": spaces.Discrete(2)})
    runner = MeanStdFilter(space)
    runner({"pos": data(0, 40), "mode": np.zeros(40, np.int64)})
    src = MeanStdFilter(space)
    src.merge_deltas([runner.pop_delta()])

    dst = MeanStdFilter(space)
    dst.set_state(src.get_state())
    probe = {"pos": data(5, 6), "mode": np.ones(6, np.int64)}
    np.testing.assert_array_equal(dst(probe, update=False)["pos"], src(probe, update=False)["pos"])
    for s, d in zip(src.get_state(), dst.get_state()):
        if s is None:
            assert d is None
            continue
        assert s["count"] == d["count"] == 40
        np.testing.assert_array_equal(s["mean"], d["mean"])
        np.testing.assert_array_equal(s["m2"], d["m2"])
    # The state is a snapshot, not a view.
    state = src.get_state()
    src.merge_deltas([[None, {"count": 10.0, "mean": np.ones(3), "m2": np.ones(3)}]])
    assert state[1]["count"] == 40


def test_reward_normalizer_hand_computed():
    # gamma 0.5, rewards 1, 1, 1: discounted returns 1, 1.5, 1.75; their mean is 4.25 / 3
    # and their variance (1/3) * ((1 - m)^2 + (1.5 - m)^2 + (1.75 - m)^2) = 0.0972222...
    norm = RewardNormalizer(gamma=0.5)
    out = norm(np.ones((3, 1), np.float32), np.zeros((3, 1), bool), runner_index=0)
    assert np.allclose(out, 1.0 / np.sqrt(0.3500 / 3.6), atol=1e-5)
    assert out.dtype == np.float32


def test_reward_normalizer_carries_returns_across_fragments_and_resets_at_episode_ends():
    norm = RewardNormalizer(gamma=0.5)
    norm(np.array([[2.0, 4.0]], np.float32), np.array([[False, True]]), runner_index=3)
    # column 0 carries its return 2 on; column 1 ended its episode, so it starts again at 0
    assert norm.returns[3].tolist() == [2.0, 0.0]
    norm(np.array([[1.0, 1.0]], np.float32), np.array([[False, False]]), runner_index=3)
    assert norm.returns[3].tolist() == [2.0, 1.0]  # 0.5 * 2 + 1, and 0.5 * 0 + 1
    # another runner's columns are its own
    norm(np.array([[8.0, 8.0]], np.float32), np.array([[False, False]]), runner_index=4)
    assert norm.returns[3].tolist() == [2.0, 1.0] and norm.returns[4].tolist() == [8.0, 8.0]
    # every discounted return seen so far enters the statistics: 2, 4, 2, 1, 8, 8
    seen = np.array([2.0, 4.0, 2.0, 1.0, 8.0, 8.0])
    assert norm.stats.count == 6 and np.isclose(norm.stats.mean, seen.mean())
    assert np.isclose(norm.stats.std, seen.std(), atol=1e-7)


def test_reward_normalizer_clips_and_round_trips_its_state():
    norm = RewardNormalizer(gamma=0.0, clip=2.0)
    out = norm(np.array([[0.0], [0.0], [0.0], [100.0]], np.float32), np.zeros((4, 1), bool), runner_index=0)
    # returns 0, 0, 0, 100: std 43.30..., so 100 / 43.3 = 2.31 is clipped to 2
    assert out[-1, 0] == 2.0 and out[0, 0] == 0.0
    copy = RewardNormalizer(gamma=0.0, clip=2.0)
    copy.set_state(norm.get_state())
    batch = np.array([[1.0], [3.0]], np.float32)
    assert np.array_equal(copy(batch, np.zeros((2, 1), bool), 0), norm(batch, np.zeros((2, 1), bool), 0))

import numpy as np
import pytest

from rlfleet.rl.replay import MinTree, SumTree


def brute_find(p, u):
    c = np.cumsum(p)
    return int(np.searchsorted(c, u, side="right"))


def test_sums_and_mins_match_brute_force_after_random_updates():
    rng = np.random.default_rng(0)
    cap = 37  # not a power of two: the padding leaves must stay neutral
    s, m = SumTree(cap), MinTree(cap)
    ref = np.zeros(cap)
    written = np.zeros(cap, bool)
    for _ in range(50):
        idx = rng.integers(0, cap, size=rng.integers(1, 10))
        val = rng.uniform(0.1, 5.0, size=idx.size)
        s.update(idx, val)
        m.update(idx, val)
        for i, v in zip(idx, val):  # sequential semantics: the last write wins
            ref[i] = v
            written[i] = True
        assert s.total == pytest.approx(ref.sum())
        assert m.min == pytest.approx(ref[written].min())
        np.testing.assert_allclose(s[np.arange(cap)], ref)


def test_find_matches_prefix_sum_search():
    p = np.array([1.0, 0.0, 2.0, 3.0, 0.0, 4.0])
    s = SumTree(len(p))
    s.update(np.arange(len(p)), p)
    # boundaries: [0,1) -> 0, [1,3) -> 2, [3,6) -> 3, [6,10) -> 5
    for u, want in [(0.0, 0), (0.999, 0), (1.0, 2), (2.5, 2), (3.0, 3), (5.99, 3), (6.0, 5), (9.99, 5)]:
        assert s.find(np.array([u]))[0] == want == brute_find(p, u)


def test_find_never_lands_on_a_zero_priority_leaf_at_the_edge():
    p = np.array([0.3, 0.1, 0.2, 0.0, 0.0, 0.0, 0.0, 0.0])
    s = SumTree(len(p))
    s.update(np.arange(len(p)), p)
    # A draw at (or round-off past) the total must still hit the last non-zero leaf.
    assert s.find(np.array([s.total, s.total + 1e-12]))[0] == 2


def test_sampling_proportions_within_statistical_tolerance():
    rng = np.random.default_rng(1)
    p = np.array([1.0, 2.0, 0.0, 4.0, 8.0, 1.0])
    s = SumTree(len(p))
    s.update(np.arange(len(p)), p)
    n = 64 * 2000
    counts = np.bincount(np.concatenate([s.sample(64, rng) for _ in range(2000)]), minlength=len(p))
    expected = p / p.sum()
    freq = counts / n
    assert counts[2] == 0  # zero priority is never drawn
    sigma = np.sqrt(expected * (1 - expected) / n)
    assert np.all(np.abs(freq - expected) <= 5 * sigma + 1e-12), (freq, expected)


def test_update_changes_the_sampling_distribution():
    rng = np.random.default_rng(2)
    s = SumTree(4)
    s.update(np.arange(4), np.ones(4))
    s.update(np.array([1]), np.array([0.0]))
    draws = s.sample(4000, rng)
    assert 1 not in set(draws.tolist())
    assert s.total == pytest.approx(3.0)


def test_bad_indices_and_empty_tree_are_refused():
    s = SumTree(4)
    with pytest.raises(IndexError, match="out of"):
        s.update(np.array([4]), np.array([1.0]))
    with pytest.raises(ValueError, match="sum to 0"):
        s.sample(1, np.random.default_rng(0))

import numpy as np
import pytest

from rlfleet.rl.postprocessing import compute_gae


def col(*xs, dtype=np.float32):
    return np.array(xs, dtype=dtype)[:, None]  # (T, 1)


def test_gae_termination_and_truncation_in_one_fragment():
    # gamma = lam = 0.5. t1 terminates (no bootstrap), t3 is truncated with V(final) = 10.
    # deltas: 1 + .5*1 - .5 = 1;  2 + 0 - 1 = 1;  3 + .5*2 - 1.5 = 2.5;  4 + .5*10 - 2 = 7
    # A3 = 7; A2 = 2.5 + .25*7 = 4.25; A1 = 1 (episode ended); A0 = 1 + .25*1 = 1.25
    adv, targets = compute_gae(
        rewards=col(1, 2, 3, 4),
        values=col(0.5, 1, 1.5, 2),
        next_values=col(1, 0, 2, 10),
        terminated=col(False, True, False, False, dtype=bool),
        truncated=col(False, False, False, True, dtype=bool),
        gamma=0.5,
        lam=0.5,
    )
    np.testing.assert_allclose(adv[:, 0], [1.25, 1.0, 4.25, 7.0])
    np.testing.assert_allclose(targets[:, 0], [1.75, 2.0, 5.75, 9.0])


def test_gae_truncation_mid_fragment_bootstraps_and_stops_recursion():
    # gamma .5, lam 1. t1 truncated with V(final) = 4; last step bootstraps V(s_3) = 2.
    # deltas .5, 2, 1 -> A2 = 1, A1 = 2 (no leak from the next episode), A0 = .5 + .5*2 = 1.5
    adv, _ = compute_gae(
        rewards=col(1, 1, 1),
        values=col(1, 1, 1),
        next_values=col(1, 4, 2),
        terminated=col(False, False, False, dtype=bool),
        truncated=col(False, True, False, dtype=bool),
        gamma=0.5,
        lam=1.0,
    )
    np.testing.assert_allclose(adv[:, 0], [1.5, 2.0, 1.0])


def test_gae_columns_are_independent_envs():
    rng = np.random.default_rng(0)
    T, B = 5, 3
    r, v, nv = (rng.normal(size=(T, B)).astype(np.float32) for _ in range(3))
    term = rng.random((T, B)) < 0.2
    trunc = rng.random((T, B)) < 0.2
    adv, _ = compute_gae(r, v, nv, term, trunc, gamma=0.9, lam=0.7)
    for b in range(B):
        one, _ = compute_gae(r[:, b : b + 1], v[:, b : b + 1], nv[:, b : b + 1], term[:, b : b + 1],
                             trunc[:, b : b + 1], gamma=0.9, lam=0.7)
        np.testing.assert_allclose(adv[:, b], one[:, 0], rtol=1e-6)


def test_gae_lambda_one_is_discounted_return_minus_value():
    r = col(1, 1, 1)
    v = col(0, 0, 0)
    adv, _ = compute_gae(r, v, col(0, 0, 0), col(False, False, True, dtype=bool), col(False, False, False, dtype=bool),
                         gamma=0.9, lam=1.0)
    assert adv[0, 0] == pytest.approx(1 + 0.9 + 0.81)

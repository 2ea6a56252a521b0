import numpy as np
import pytest
import torch

from rlfleet.rl.postprocessing import compute_gae, vtrace


def vtrace_loop(mu_logp, pi_logp, r, v, v_next, term, trunc, gamma, rho_bar, c_bar):
    """Espeholt et al. 2018, eq. 1, written as the paper's sum for one env column:
    v_s = V(x_s) + sum_{t >= s} gamma^{t-s} (prod_{i=s}^{t-1} c_i) delta_t, stopping at an episode end."""
    T = len(r)
    ratio = np.exp(pi_logp - mu_logp)
    rho = np.minimum(rho_bar, ratio)
    c = np.minimum(c_bar, ratio)
    delta = [rho[t] * (r[t] + gamma * (0.0 if term[t] else v_next[t]) - v[t]) for t in range(T)]
    vs = np.zeros(T)
    for s in range(T):
        total, weight = 0.0, 1.0
        for t in range(s, T):
            total += weight * delta[t]
            if term[t] or trunc[t]:
                break
            weight *= gamma * c[t]
        vs[s] = v[s] + total
    adv = np.zeros(T)
    for s in range(T):
        if term[s]:
            nxt = 0.0
        elif trunc[s] or s == T - 1:
            nxt = v_next[s]
        else:
            nxt = vs[s + 1]
        adv[s] = rho[s] * (r[s] + gamma * nxt - v[s])
    return vs, adv


def run(mu, pi, r, v, vn, term, trunc, **kw):
    as_t = lambda x, dt=torch.float64: torch.tensor(np.asarray(x), dtype=dt)[:, None]  # (T, 1)
    vs, adv = vtrace(as_t(mu), as_t(pi), as_t(r), as_t(v), as_t(vn), as_t(term, torch.bool), as_t(trunc, torch.bool), **kw)
    return vs[:, 0].numpy(), adv[:, 0].numpy()


@pytest.mark.parametrize("rho_bar,c_bar", [(1.0, 1.0), (0.5, 0.8), (10.0, 10.0)])
def test_vtrace_matches_the_papers_sum_with_episode_ends_and_clipping(rho_bar, c_bar):
    rng = np.random.default_rng(0)
    T = 9
    mu = rng.normal(size=T) - 1.0
    pi = mu + rng.normal(scale=0.8, size=T)  # ratios on both sides of 1, so clipping binds
    r, v, vn = rng.normal(size=T), rng.normal(size=T), rng.normal(size=T)
    term = np.zeros(T, bool)
    trunc = np.zeros(T, bool)
    term[3], trunc[6] = True, True  # a termination and a truncation inside the fragment
    ratio = np.exp(pi - mu)
    assert (ratio > max(rho_bar, c_bar)).any() or rho_bar == 10.0  # clipping really binds
    vs, adv = run(mu, pi, r, v, vn, term, trunc, gamma=0.9, rho_bar=rho_bar, c_bar=c_bar)
    ref_vs, ref_adv = vtrace_loop(mu, pi, r, v, vn, term, trunc, 0.9, rho_bar, c_bar)
    np.testing.assert_allclose(vs, ref_vs, rtol=1e-10, atol=1e-12)
    np.testing.assert_allclose(adv, ref_adv, rtol=1e-10, atol=1e-12)


def test_vtrace_by_hand_two_steps():
    # gamma .5; step 0 ratio e^1 clipped to 1 (rho = c = 1); step 1 ratio e^-1 ~ .3679 (not clipped)
    # V = [1, 2], V(x_2) = 4, r = [1, 1]
    # delta1 = .3679 (1 + .5*4 - 2) = .3679;  v1 = 2 + .3679
    # delta0 = 1 (1 + .5*2 - 1) = 1;          v0 = 1 + 1 + .5 * 1 * .3679 = 2.18394
    # A0 = 1 (1 + .5 v1 - 1) = 1.18394;       A1 = .3679 (1 + .5*4 - 2) = .3679
    e = np.exp(-1.0)
    vs, adv = run([0.0, 0.0], [1.0, -1.0], [1.0, 1.0], [1.0, 2.0], [2.0, 4.0], [False, False], [False, False], gamma=0.5)
    np.testing.assert_allclose(vs, [2 + 0.5 * e, 2 + e])
    np.testing.assert_allclose(adv, [1 + 0.5 * (2 + e) - 1, e])


def test_on_policy_vtrace_equals_gae_with_lambda_one():
    rng = np.random.default_rng(1)
    T, B = 6, 3
    logp = rng.normal(size=(T, B))
    r, v, vn = (rng.normal(size=(T, B)) for _ in range(3))
    term, trunc = rng.random((T, B)) < 0.2, rng.random((T, B)) < 0.15
    t = lambda x: torch.tensor(x)
    vs, adv = vtrace(t(logp), t(logp), t(r), t(v), t(vn), t(term), t(trunc), gamma=0.9)
    gae, targets = compute_gae(r, v, vn, term, trunc, gamma=0.9, lam=1.0)
    np.testing.assert_allclose(vs.numpy(), targets, rtol=1e-5)

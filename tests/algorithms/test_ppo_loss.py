"""ppo_loss against hand-computed numbers on 4 rows.

The rows are built from probability ratios r = exp(logp - old_logp), so every expected
number below follows from r, the advantages and clip_param = 0.2 by hand.
"""

import math

import pytest
import torch

from rlfleet.algorithms.ppo import ppo_loss
from rlfleet.rl.learner import normalize

CLIP = 0.2


def t(*xs, grad=False):
    return torch.tensor(xs, dtype=torch.float64, requires_grad=grad)


def logps(ratios, old=(-0.7, -1.2, -0.3, -2.0)):
    """(new logp, old logp) with exp(new - old) = ratios; only the difference may matter."""
    old_t = t(*old[: len(ratios)])
    new = (old_t + torch.log(t(*ratios))).detach().requires_grad_(True)
    return new, old_t


def loss_of(logp, old_logp, advantages, *, values=None, old_values=None, targets=None, entropy=None,
            vf_clip_param=None, vf_coef=0.0, entropy_coef=0.0, normalize_advantages=False):
    n = len(logp)
    zeros = t(*([0.0] * n))
    return ppo_loss(
        logp,
        old_logp,
        normalize(advantages) if normalize_advantages else advantages,
        zeros if values is None else values,
        zeros if old_values is None else old_values,
        zeros if targets is None else targets,
        zeros if entropy is None else entropy,
        clip_param=CLIP,
        vf_clip_param=vf_clip_param,
        vf_coef=vf_coef,
        entropy_coef=entropy_coef,
    )


def test_ratio_clipping_binds_on_both_sides_and_only_when_pessimistic():
    # row  r    A    r*A    clip(r)*A   min    clip binds?
    #  0   1.5  +2   3.0    1.2*2=2.4   2.4    yes (upper side, A > 0)
    #  1   0.5  -1  -0.5    0.8*-1=-.8  -0.8   yes (lower side, A < 0)
    #  2   0.5  +1   0.5    0.8         0.5    no  (unclipped is the pessimistic one)
    #  3   1.5  -1  -1.5   -1.2        -1.5    no
    # policy_loss = -(2.4 - 0.8 + 0.5 - 1.5) / 4 = -0.15
    logp, old = logps([1.5, 0.5, 0.5, 1.5])
    loss, m = loss_of(logp, old, t(2.0, -1.0, 1.0, -1.0))
    assert m["losses/policy_loss"].item() == pytest.approx(-0.15, abs=1e-12)
    assert loss.item() == pytest.approx(-0.15, abs=1e-12)

    # Where the clip binds the row gives no gradient; elsewhere d/dlogp (-r*A/4) = -r*A/4.
    loss.backward()
    torch.testing.assert_close(logp.grad, t(0.0, 0.0, -0.5 * 1.0 / 4, -1.5 * -1.0 / 4))


def test_approx_kl_and_clip_fraction():
    # k3 estimator: mean((r - 1) - log r); rows 0 and 1 are outside [0.8, 1.2], 2 and 3 inside.
    ratios = [1.5, 0.5, 1.1, 0.95]
    logp, old = logps(ratios)
    _, m = loss_of(logp, old, t(1.0, 1.0, 1.0, 1.0))
    expected_kl = ((0.5 - math.log(1.5)) + (-0.5 - math.log(0.5)) + (0.1 - math.log(1.1))
                   + (-0.05 - math.log(0.95))) / 4
    assert expected_kl == pytest.approx(0.0734163, abs=1e-7)  # the same, by hand
    assert m["losses/approx_kl"].item() == pytest.approx(expected_kl, rel=1e-9)
    assert m["losses/clip_fraction"].item() == pytest.approx(0.5)
    assert not m["losses/approx_kl"].requires_grad


def test_approx_kl_and_clip_fraction_are_zero_on_policy():
    logp, old = logps([1.0, 1.0, 1.0])
    _, m = loss_of(logp, old, t(1.0, -2.0, 0.5))
    assert m["losses/approx_kl"].item() == 0.0
    assert m["losses/clip_fraction"].item() == 0.0
    # ratio 1: the surrogate is the plain mean advantage, -(1 - 2 + 0.5) / 3
    assert m["losses/policy_loss"].item() == pytest.approx(0.5 / 3)


# values / old values / targets for the value-loss tests
V = (1.0, 2.0, 0.0, 3.0)
OLD_V = (0.5, 2.4, 0.5, 2.0)
TARGETS = (0.0, 2.5, 1.0, 3.0)


def test_value_loss_without_clipping():
    # squared errors (v - target)^2: 1, 0.25, 1, 0 -> 0.5 * mean = 0.5 * 2.25 / 4 = 0.28125
    logp, old = logps([1.0] * 4)
    values = t(*V, grad=True)
    loss, m = loss_of(logp, old, t(0.0, 0.0, 0.0, 0.0), values=values, old_values=t(*OLD_V),
                      targets=t(*TARGETS), vf_coef=0.5)
    assert m["losses/value_loss"].item() == pytest.approx(0.28125)
    assert loss.item() == pytest.approx(0.5 * 0.28125)
    loss.backward()
    # d/dv 0.5 * 0.5 * mean((v - t)^2) = 0.5 * (v - t) / 4
    torch.testing.assert_close(values.grad, t(0.125, -0.0625, -0.125, 0.0))


def test_value_loss_with_clipping_takes_the_pessimistic_error():
    # vf_clip_param 0.2: v_clip = old + clamp(v - old, -0.2, 0.2)
    # row  v    old  target  (v-t)^2  v_clip  (v_clip-t)^2  max
    #  0   1.0  0.5  0.0     1.0      0.7     0.49          1.0   (unclipped)
    #  1   2.0  2.4  2.5     0.25     2.2     0.09          0.25  (unclipped)
    #  2   0.0  0.5  1.0     1.0      0.3     0.49          1.0   (unclipped)
    #  3   3.0  2.0  3.0     0.0      2.2     0.64          0.64  (clipped: v moved too far)
    # value_loss = 0.5 * (1 + 0.25 + 1 + 0.64) / 4 = 0.36125
    logp, old = logps([1.0] * 4)
    values = t(*V, grad=True)
    loss, m = loss_of(logp, old, t(0.0, 0.0, 0.0, 0.0), values=values, old_values=t(*OLD_V),
                      targets=t(*TARGETS), vf_clip_param=0.2, vf_coef=1.0)
    assert m["losses/value_loss"].item() == pytest.approx(0.36125)
    assert loss.item() == pytest.approx(0.36125)
    loss.backward()
    # row 3 takes the clipped branch, which is flat in v: no gradient there.
    torch.testing.assert_close(values.grad, t(0.25, -0.125, -0.25, 0.0))


def test_entropy_bonus_and_total_loss():
    # policy -0.15 (first test's rows), value 0.28125 (unclipped rows above), entropy mean 0.4
    # loss = -0.15 + 0.5 * 0.28125 - 0.01 * 0.4 = -0.013375
    logp, old = logps([1.5, 0.5, 0.5, 1.5])
    entropy = t(0.6, 0.2, 0.4, 0.4, grad=True)
    loss, m = loss_of(logp, old, t(2.0, -1.0, 1.0, -1.0), values=t(*V), old_values=t(*OLD_V),
                      targets=t(*TARGETS), entropy=entropy, vf_coef=0.5, entropy_coef=0.01)
    assert m["losses/entropy"].item() == pytest.approx(0.4)
    assert loss.item() == pytest.approx(-0.013375, abs=1e-12)
    loss.backward()
    torch.testing.assert_close(entropy.grad, t(-0.0025, -0.0025, -0.0025, -0.0025))  # -coef / N


def test_entropy_coefficient_zero_ignores_entropy():
    logp, old = logps([1.5, 0.5, 0.5, 1.5])
    loss, m = loss_of(logp, old, t(2.0, -1.0, 1.0, -1.0), entropy=t(5.0, 5.0, 5.0, 5.0))
    assert loss.item() == pytest.approx(-0.15, abs=1e-12)
    assert m["losses/entropy"].item() == pytest.approx(5.0)


def test_advantage_normalisation():
    # A = (2, -1, 1, -1): mean 0.25, deviations (1.75, -1.25, 0.75, -1.25), sum of squares
    # 6.75, Bessel-corrected variance 6.75 / 3 = 2.25, std 1.5 -> A_n = (7/6, -5/6, 1/2, -5/6)
    # row  r    A_n    r*A_n   clip(r)*A_n  min
    #  0   1.5  7/6    1.75    1.4          1.4
    #  1   0.5  -5/6  -5/12   -2/3         -2/3
    #  2   0.5  1/2    0.25    0.4          0.25
    #  3   1.5  -5/6  -1.25   -1.0         -1.25
    # policy_loss = -(1.4 - 2/3 + 0.25 - 1.25) / 4 = 1/15
    logp, old = logps([1.5, 0.5, 0.5, 1.5])
    adv = t(2.0, -1.0, 1.0, -1.0)
    _, on = loss_of(logp, old, adv, normalize_advantages=True)
    _, off = loss_of(logp, old, adv, normalize_advantages=False)
    assert on["losses/policy_loss"].item() == pytest.approx(1 / 15, rel=1e-6)
    assert off["losses/policy_loss"].item() == pytest.approx(-0.15, abs=1e-12)


def test_advantage_normalisation_is_shift_and_scale_invariant():
    logp, old = logps([1.5, 0.5, 0.5, 1.5])
    _, a = loss_of(logp, old, t(2.0, -1.0, 1.0, -1.0), normalize_advantages=True)
    _, b = loss_of(logp, old, t(2.0, -1.0, 1.0, -1.0) * 10 + 3, normalize_advantages=True)
    assert a["losses/policy_loss"].item() == pytest.approx(b["losses/policy_loss"].item(), rel=1e-6)


def test_advantage_normalisation_with_one_row_stays_finite():
    # minibatch_size=1 passes config validation; the std of one row is undefined (NaN with
    # Bessel's correction), which must not turn the loss, and then the weights, into NaN.
    logp, old = logps([1.1])
    loss, m = loss_of(logp, old, t(3.0), normalize_advantages=True)
    assert torch.isfinite(loss), f"loss {loss.item()} for a single-row minibatch"
    assert all(torch.isfinite(v) for v in m.values()), {k: v.item() for k, v in m.items()}

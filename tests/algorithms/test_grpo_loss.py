import math

import pytest
import torch

from rlfleet.algorithms.grpo.loss import group_advantages, grpo_loss, kl_k3, masked_mean


def test_group_advantages_by_hand():
    # groups of 3: [1, 0, 0] -> mean 1/3, std sqrt(2/9); [1, 1, 1] -> no signal
    adv = group_advantages(torch.tensor([1.0, 0.0, 0.0, 1.0, 1.0, 1.0]), 3)
    s = math.sqrt(2 / 9)
    torch.testing.assert_close(adv, torch.tensor([(2 / 3) / s, (-1 / 3) / s, (-1 / 3) / s, 0.0, 0.0, 0.0]), atol=1e-5, rtol=1e-5)
    centred = group_advantages(torch.tensor([3.0, 1.0]), 2, normalize_std=False)
    torch.testing.assert_close(centred, torch.tensor([1.0, -1.0]))


def test_k3_kl_values():
    logp = torch.tensor([math.log(0.5), math.log(0.2)])
    ref = torch.tensor([math.log(0.25), math.log(0.2)])
    # r = ref/pi = 0.5: 0.5 - log 0.5 - 1 = 0.193147; identical policies: 0
    torch.testing.assert_close(kl_k3(logp, ref), torch.tensor([0.5 - math.log(0.5) - 1, 0.0]))
    # unbiased: the mean over samples of pi approaches KL(pi || ref)
    g = torch.Generator().manual_seed(0)
    pi, q = torch.tensor([0.7, 0.2, 0.1]), torch.tensor([0.5, 0.3, 0.2])
    x = torch.multinomial(pi, 200_000, replacement=True, generator=g)
    estimate = kl_k3(pi.log()[x], q.log()[x]).mean()
    assert estimate.item() == pytest.approx((pi * (pi / q).log()).sum().item(), rel=0.02)


def test_masks_exclude_prompt_and_padding_tokens():
    # Row 0: two completion tokens; row 1: one. Garbage (huge values) at masked positions
    # must not change the loss or its gradient.
    mask = torch.tensor([[0.0, 1.0, 1.0, 0.0], [0.0, 0.0, 1.0, 0.0]])
    base = torch.zeros(2, 4)
    garbage = torch.where(mask.bool(), base, torch.full_like(base, 50.0))
    adv = torch.tensor([1.0, -2.0])
    lp1 = base.clone().requires_grad_()
    lp2 = garbage.clone().requires_grad_()
    l1, m1 = grpo_loss(lp1, base, base, adv, mask, clip_param=0.2, kl_coef=0.1)
    l2, m2 = grpo_loss(lp2, garbage, garbage, adv, mask, clip_param=0.2, kl_coef=0.1)
    assert l1.item() == pytest.approx(l2.item())
    # ratio 1 everywhere: loss = -(1 + 1 - 2) / 3 = 0; gradient on masked tokens is 0
    assert l1.item() == pytest.approx(0.0)
    l2.backward()
    assert torch.all(lp2.grad[~mask.bool()] == 0)
    assert m1["kl_to_ref"].item() == pytest.approx(0.0)


def test_clipping_and_kl_term_by_hand():
    mask = torch.ones(1, 2)
    old = torch.zeros(1, 2)
    logp = torch.tensor([[math.log(1.5), math.log(0.5)]])  # ratios 1.5 and 0.5
    adv = torch.tensor([2.0])
    # A > 0: min(1.5*2, 1.2*2) = 2.4 ; min(0.5*2, 0.8*2) = 1.0 -> policy loss -(3.4/2) = -1.7
    loss, m = grpo_loss(logp, old, None, adv, mask, clip_param=0.2, kl_coef=0.0)
    assert loss.item() == pytest.approx(-1.7)
    assert m["losses/clip_fraction"].item() == pytest.approx(1.0)
    assert "kl_to_ref" not in m  # no reference: no KL computed
    ref = torch.zeros(1, 2)  # k3 with log r = -log 1.5, -log 0.5
    k = [1 / 1.5 + math.log(1.5) - 1, 2.0 + math.log(0.5) - 1]
    loss_kl, m_kl = grpo_loss(logp, old, ref, adv, mask, clip_param=0.2, kl_coef=0.5)
    assert m_kl["kl_to_ref"].item() == pytest.approx(sum(k) / 2)
    assert loss_kl.item() == pytest.approx(-1.7 + 0.5 * sum(k) / 2)


def test_masked_mean_ignores_masked_entries():
    assert masked_mean(torch.tensor([1.0, 100.0, 3.0]), torch.tensor([1.0, 0.0, 1.0])).item() == pytest.approx(2.0)

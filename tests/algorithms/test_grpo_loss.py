import math
import re

import pytest
import torch

from rlfleet.algorithms.grpo.config import GRPOConfig
from rlfleet.algorithms.grpo.loss import (group_advantages, grpo_loss, informative_groups, kl_k3, kl_reward_penalty,
                                         masked_mean, overlong_penalty)
from rlfleet.rl.config import ConfigError


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


# -- the variants, by hand -------------------------------------------------------------------

TWO_ROWS_MASK = torch.tensor([[1.0, 1.0, 1.0, 0.0], [1.0, 0.0, 0.0, 0.0]])  # 3 tokens, then 1, of a budget of 4


@pytest.mark.parametrize("aggregation, expected", [
    ("token_mean", -(3 * 1.0 + 1 * -2.0) / 4),  # every token weighs the same: 0.25 -> -0.25
    ("sequence_mean", -(1.0 + -2.0) / 2),  # each completion's mean first: -0.5 -> 0.5
    ("constant", -(3 * 1.0 + 1 * -2.0) / (2 * 4)),  # sum / (completions x budget): Dr. GRPO
])
def test_aggregations_by_hand(aggregation, expected):
    zeros = torch.zeros(2, 4)  # ratio 1: each token's surrogate is its completion's advantage
    loss, _ = grpo_loss(zeros, zeros, None, torch.tensor([1.0, -2.0]), TWO_ROWS_MASK, clip_param=0.2, kl_coef=0.0,
                        aggregation=aggregation)
    assert loss.item() == pytest.approx(expected)


def test_clip_higher_lets_a_rising_token_climb_further():
    mask, old = torch.ones(1, 2), torch.zeros(1, 2)
    logp = torch.tensor([[math.log(1.25), math.log(0.75)]]).requires_grad_()
    adv = torch.tensor([2.0])
    # symmetric 0.2: min(2.5, 1.2*2) = 2.4 and min(1.5, 0.8*2) = 1.5 -> -(3.9 / 2)
    sym, m_sym = grpo_loss(logp, old, None, adv, mask, clip_param=0.2, kl_coef=0.0)
    assert sym.item() == pytest.approx(-1.95) and m_sym["losses/clip_fraction"].item() == pytest.approx(1.0)
    # clip-higher [0.8, 1.28]: 1.25 is inside: min(2.5, 2.5) = 2.5; 0.75 as before -> -(4.0 / 2)
    high, m_high = grpo_loss(logp, old, None, adv, mask, clip_param=0.2, clip_param_high=0.28, kl_coef=0.0)
    assert high.item() == pytest.approx(-2.0) and m_high["losses/clip_fraction"].item() == pytest.approx(0.5)
    high.backward()  # the rising token now has a gradient: d(-ratio*A/2)/dlogp = -1.25
    assert logp.grad[0, 0].item() == pytest.approx(-1.25)


def test_sequence_level_ratio_gspo_by_hand():
    mask = torch.tensor([[1.0, 1.0, 0.0], [1.0, 1.0, 0.0]])
    old = torch.zeros(2, 3)
    # both rows: token log-ratios log 1.5 and log 0.5 (a padded third token of garbage) ->
    # mean log-ratio log(0.75) / 2 -> sequence ratio sqrt(0.75) = 0.8660254
    logp = torch.tensor([[math.log(1.5), math.log(0.5), 40.0]] * 2).requires_grad_()
    adv = torch.tensor([2.0, -2.0])
    loss, m = grpo_loss(logp, old, None, adv, mask, clip_param=3e-4, clip_param_high=4e-4, kl_coef=0.0,
                        ratio_level="sequence")
    r = math.sqrt(0.75)
    # A > 0: min(r A, clip(r) A) = r A (unclipped, r is below the range); A < 0: min(-r 2, -0.9997 * 2) = -1.9994
    assert loss.item() == pytest.approx(-(r * 2 + -(1 - 3e-4) * 2) / 2, rel=1e-6)
    assert m["losses/clip_fraction"].item() == pytest.approx(1.0)  # both ratios lie outside [0.9997, 1.0004]
    loss.backward()
    # row 0: d(-r A / 2)/d logp_t = -(A / 2) r / 2 on each real token; row 1 clipped: no gradient; padding: none
    torch.testing.assert_close(logp.grad, torch.tensor([[-r / 2, -r / 2, 0.0], [0.0, 0.0, 0.0]]))


def test_kl_as_reward_penalty_and_the_overlong_penalty_by_hand():
    old = torch.tensor([[math.log(0.5), math.log(0.2), 9.0]])
    ref = torch.tensor([[math.log(0.25), math.log(0.2), -9.0]])
    # summed log-ratio over the completion's tokens: log 2 + 0 (the padded token is out)
    assert kl_reward_penalty(old, ref, torch.tensor([[1.0, 1.0, 0.0]])).item() == pytest.approx(math.log(2))
    # budget 8, buffer 2: nothing up to 6 tokens, then -0.5 at 7 and -1 (the factor) at 8
    torch.testing.assert_close(overlong_penalty(torch.tensor([5, 6, 7, 8]), max_tokens=8, buffer=2),
                               torch.tensor([0.0, 0.0, -0.5, -1.0]))
    torch.testing.assert_close(overlong_penalty(torch.tensor([8]), max_tokens=8, buffer=0), torch.tensor([0.0]))
    # dynamic sampling keeps groups whose rewards differ
    assert informative_groups(torch.tensor([1.0, 1.0, 0.0, 0.0, 1.0, 0.0]), 2).tolist() == [False, False, True]


@pytest.mark.parametrize("variant, expected", [
    ("grpo", (True, "token_mean", 0.2, 0.2, "token", False, 0)),
    ("dr_grpo", (False, "constant", 0.2, 0.2, "token", False, 0)),
    ("dapo", (True, "token_mean", 0.2, 0.28, "token", True, 2)),  # buffer: a quarter of 8 tokens
    ("gspo", (True, "sequence_mean", 3e-4, 4e-4, "sequence", False, 0)),
])
def test_a_named_variant_sets_its_knobs_and_an_explicit_knob_wins(variant, expected):
    s = GRPOConfig(loss_variant=variant).loss_settings(max_new_tokens=8)
    assert (s.advantage_std, s.aggregation, s.clip_low, s.clip_high, s.ratio_level, s.dynamic_sampling,
            s.overlong_buffer) == expected
    own = GRPOConfig(loss_variant=variant, clip_param=0.1, advantage_std=True, dynamic_sampling=False).loss_settings(8)
    assert (own.clip_low, own.advantage_std, own.dynamic_sampling) == (0.1, True, False)
    assert own.clip_high == 0.1  # clip_param alone given: symmetric, whatever the variant's


@pytest.mark.parametrize("key, value, message", [
    ("loss_variant", "drgrpo", "loss_variant must be one of grpo, dr_grpo, dapo, gspo, got 'drgrpo'; did you mean 'dr_grpo'?"),
    ("loss_aggregation", "token-mean", "loss_aggregation must be one of token_mean, sequence_mean, constant, got "
                                        "'token-mean'; did you mean 'token_mean'?"),
    ("ratio_level", "seq", "ratio_level must be one of token, sequence, got 'seq'"),
    ("kl_mode", "penalty", "kl_mode must be one of loss, reward, got 'penalty'"),
    ("clip_param_high", -0.1, "clip_param_high must be > 0, got -0.1"),
    ("ratio_level", "sequence", "ratio_level sequence is one term per completion, averaged over completions: "
                                "loss_aggregation 'token_mean' does not apply (use sequence_mean)"),
])
def test_bad_variant_settings_are_one_error(key, value, message):
    with pytest.raises(ConfigError, match=re.escape(message)):
        GRPOConfig.from_dict({key: value}, source="test")


def test_truncated_importance_weights_scale_each_token_by_hand():
    mask, old = torch.ones(1, 2), torch.zeros(1, 2)
    logp = torch.zeros(1, 2)  # ratio 1 to the start policy
    adv = torch.tensor([2.0])
    # weights min(start / sampler, cap): 0.5 and a capped 3 -> 2; surrogate 2 each: -(0.5*2 + 2*2) / 2
    weights = torch.tensor([[0.5, 3.0]]).clamp(max=2.0)
    loss, _ = grpo_loss(logp, old, None, adv, mask, clip_param=0.2, kl_coef=0.0, token_weights=weights)
    assert loss.item() == pytest.approx(-2.5)
    seq, _ = grpo_loss(logp, old, None, adv, mask, clip_param=0.2, kl_coef=0.0, token_weights=weights,
                       ratio_level="sequence")  # one completion: its mean weight 1.25 times 2
    assert seq.item() == pytest.approx(-2.5)


def test_importance_metrics_by_hand():
    from rlfleet.algorithms.grpo.loss import Denominators, importance_metrics

    mask = torch.tensor([[1.0, 1.0, 1.0, 0.0]])
    sampler = torch.zeros(1, 4)
    start = torch.tensor([[math.log(1.0), math.log(1.5), math.log(0.5), 9.0]])  # the padded token is out
    m = importance_metrics(start, sampler, mask, Denominators.local(mask))
    assert m["importance/ratio_mean"].item() == pytest.approx(1.0)  # (1 + 1.5 + 0.5) / 3
    assert m["importance/outside_0.8_1.25"].item() == pytest.approx(2 / 3)

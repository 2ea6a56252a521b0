import math

import numpy as np
import pytest
import torch
from gymnasium import spaces
from torch import distributions as td

from rlfleet.rl.models.distributions import ActionDistribution, Categorical, DiagGaussian, MultiCategorical, dist_input_size

LN2, LN3, LN_2PI = math.log(2.0), math.log(3.0), math.log(2.0 * math.pi)


# --- Categorical ------------------------------------------------------------------------


def test_categorical_hand_computed_logp_entropy_kl():
    # logits [0, ln 3] -> p = [1/4, 3/4]; q = uniform [1/2, 1/2]
    p = Categorical(torch.tensor([[0.0, LN3]]))
    q = Categorical(torch.tensor([[5.0, 5.0]]))  # unnormalised logits: only differences matter
    torch.testing.assert_close(p.logp(torch.tensor([0])), torch.tensor([math.log(0.25)]))
    torch.testing.assert_close(p.logp(torch.tensor([1])), torch.tensor([math.log(0.75)]))
    # H = -(.25 ln .25 + .75 ln .75) = 0.562335
    torch.testing.assert_close(p.entropy(), torch.tensor([0.5623351]))
    # KL(p||q) = .25 ln(.25/.5) + .75 ln(.75/.5) = -0.173287 + 0.304099 = 0.130812
    torch.testing.assert_close(p.kl(q), torch.tensor([0.1308120]))
    torch.testing.assert_close(q.kl(q), torch.tensor([0.0]))


def test_categorical_matches_torch_distributions():
    g = torch.Generator().manual_seed(0)
    logits_p, logits_q = torch.randn(16, 5, generator=g) * 2, torch.randn(16, 5, generator=g) * 2
    actions = torch.randint(0, 5, (16,), generator=g)
    ours_p, ours_q = Categorical(logits_p), Categorical(logits_q)
    ref_p, ref_q = td.Categorical(logits=logits_p), td.Categorical(logits=logits_q)
    torch.testing.assert_close(ours_p.logp(actions), ref_p.log_prob(actions))
    torch.testing.assert_close(ours_p.entropy(), ref_p.entropy())
    torch.testing.assert_close(ours_p.kl(ours_q), td.kl_divergence(ref_p, ref_q))


def test_categorical_deterministic_is_argmax():
    logits = torch.tensor([[0.1, 2.0, -1.0], [3.0, 0.0, 2.9], [-5.0, -4.0, -3.0]])
    assert Categorical(logits).deterministic().tolist() == [1, 0, 2]


def test_categorical_sample_frequencies_match_probabilities():
    torch.manual_seed(0)
    probs = torch.tensor([0.2, 0.3, 0.5])
    n = 20_000
    draws = Categorical(probs.log().expand(n, 3)).sample()
    assert draws.shape == (n,)
    freq = torch.bincount(draws, minlength=3).double() / n
    # binomial std of each frequency <= sqrt(.25 / n) = 0.0035; 0.015 is > 4 sigma
    torch.testing.assert_close(freq, probs.double(), atol=0.015, rtol=0.0)


def test_categorical_logp_accepts_float_actions():
    # Actions come back from numpy batches as whatever dtype was stored.
    p = Categorical(torch.tensor([[0.0, LN3]]))
    torch.testing.assert_close(p.logp(torch.tensor([1.0])), torch.tensor([math.log(0.75)]))


# --- MultiCategorical ---------------------------------------------------------------------


def test_multicategorical_hand_computed_uniform():
    # nvec [2, 3], all logits equal: every action has p = 1/2 * 1/3, H = ln 6
    d = MultiCategorical(torch.zeros(2, 5), [2, 3])
    torch.testing.assert_close(d.logp(torch.tensor([[0, 2], [1, 0]])), torch.full((2,), -math.log(6.0)))
    torch.testing.assert_close(d.entropy(), torch.full((2,), math.log(6.0)))
    torch.testing.assert_close(d.kl(d), torch.zeros(2))


def test_multicategorical_matches_independent_torch_categoricals():
    g = torch.Generator().manual_seed(1)
    nvec = [2, 4, 3]
    lp, lq = torch.randn(8, 9, generator=g), torch.randn(8, 9, generator=g)
    actions = torch.stack([torch.randint(0, n, (8,), generator=g) for n in nvec], -1)  # (B, k)
    refs_p = [td.Categorical(logits=x) for x in torch.split(lp, nvec, -1)]
    refs_q = [td.Categorical(logits=x) for x in torch.split(lq, nvec, -1)]
    ours_p, ours_q = MultiCategorical(lp, nvec), MultiCategorical(lq, nvec)
    torch.testing.assert_close(ours_p.logp(actions), sum(r.log_prob(actions[:, i]) for i, r in enumerate(refs_p)))
    torch.testing.assert_close(ours_p.entropy(), sum(r.entropy() for r in refs_p))
    torch.testing.assert_close(ours_p.kl(ours_q), sum(td.kl_divergence(a, b) for a, b in zip(refs_p, refs_q)))


def test_multicategorical_deterministic_is_argmax_per_component():
    logits = torch.tensor([[0.0, 1.0, 5.0, 0.0, 0.0]])  # [0, 1] | [5, 0, 0]
    d = MultiCategorical(logits, [2, 3])
    assert d.deterministic().tolist() == [[1, 0]]
    torch.manual_seed(0)
    assert d.sample().shape == (1, 2)


# --- DiagGaussian -------------------------------------------------------------------------


def test_diag_gaussian_hand_computed_logp_entropy():
    # mean [0, 1], std [1, 2], action [1, 1]: z = [1, 0]
    # logp = (-.5 - 0 - .5 ln 2pi) + (0 - ln 2 - .5 ln 2pi) = -.5 - ln 2 - ln 2pi = -3.031024
    d = DiagGaussian(torch.tensor([[0.0, 1.0, 0.0, LN2]]))
    torch.testing.assert_close(d.logp(torch.tensor([[1.0, 1.0]])), torch.tensor([-3.0310242]))
    # H = sum(log_std + .5 (1 + ln 2pi)) = ln 2 + 2 * 1.418939 = 3.531024
    torch.testing.assert_close(d.entropy(), torch.tensor([3.5310242]))


def test_diag_gaussian_hand_computed_kl():
    # KL(N(0, 1) || N(1, 2^2)) = ln(2/1) + (1 + 1) / (2 * 4) - 1/2 = 0.693147 + .25 - .5 = 0.443147
    p = DiagGaussian(torch.tensor([[0.0, 0.0]]))
    q = DiagGaussian(torch.tensor([[1.0, LN2]]))
    torch.testing.assert_close(p.kl(q), torch.tensor([0.4431472]))
    torch.testing.assert_close(p.kl(p), torch.tensor([0.0]))


def test_diag_gaussian_matches_torch_distributions():
    g = torch.Generator().manual_seed(2)
    mean_p, mean_q = torch.randn(10, 3, generator=g), torch.randn(10, 3, generator=g)
    ls_p, ls_q = torch.randn(10, 3, generator=g) * 0.5, torch.randn(10, 3, generator=g) * 0.5
    actions = torch.randn(10, 3, generator=g) * 2
    ours_p = DiagGaussian(torch.cat([mean_p, ls_p], -1))
    ours_q = DiagGaussian(torch.cat([mean_q, ls_q], -1))
    ref_p = td.Independent(td.Normal(mean_p, ls_p.exp()), 1)
    ref_q = td.Independent(td.Normal(mean_q, ls_q.exp()), 1)
    torch.testing.assert_close(ours_p.logp(actions), ref_p.log_prob(actions))
    torch.testing.assert_close(ours_p.entropy(), ref_p.entropy())
    torch.testing.assert_close(ours_p.kl(ours_q), td.kl_divergence(ref_p, ref_q))


def test_diag_gaussian_deterministic_is_mean_and_samples_have_its_moments():
    inputs = torch.tensor([[1.5, -2.0, 0.0, math.log(0.5)]])  # mean [1.5, -2], std [1, .5]
    d = DiagGaussian(inputs.expand(20_000, 4))
    torch.testing.assert_close(d.deterministic()[0], torch.tensor([1.5, -2.0]))
    torch.manual_seed(0)
    x = d.sample()
    assert x.shape == (20_000, 2)
    # std error of the mean <= 1 / sqrt(20000) = 0.007
    torch.testing.assert_close(x.mean(0), torch.tensor([1.5, -2.0]), atol=0.03, rtol=0)
    torch.testing.assert_close(x.std(0), torch.tensor([1.0, 0.5]), atol=0.03, rtol=0)


# --- ActionDistribution over nested spaces -----------------------------------------------


def nested_dict_space() -> spaces.Dict:
    # dm-tree order is by sorted key: a (Discrete 3), b (Box 2), c (MultiDiscrete [2, 3])
    return spaces.Dict(
        {
            "c": spaces.MultiDiscrete([2, 3]),
            "b": spaces.Box(-1.0, 1.0, (2,), np.float32),
            "a": spaces.Discrete(3),
        }
    )


def test_dist_input_size_per_leaf():
    assert dist_input_size(spaces.Discrete(5)) == 5
    assert dist_input_size(spaces.MultiDiscrete([2, 3, 4])) == 9
    assert dist_input_size(spaces.Box(-1, 1, (3,))) == 6


def test_action_distribution_splits_inputs_in_dm_tree_order():
    space = nested_dict_space()
    inputs = torch.arange(3 + 4 + 5, dtype=torch.float32).unsqueeze(0)  # (1, 12)
    dist = ActionDistribution(inputs, space)
    assert [type(d) for d in dist.leaves] == [Categorical, DiagGaussian, MultiCategorical]
    # columns 0..2 -> a, 3..6 -> b (mean 3, 4; log_std 5, 6), 7..11 -> c
    assert dist.leaves[0].deterministic().tolist() == [2]
    torch.testing.assert_close(dist.leaves[1].mean, torch.tensor([[3.0, 4.0]]))
    torch.testing.assert_close(dist.leaves[1].log_std, torch.tensor([[5.0, 6.0]]))
    assert dist.leaves[2].deterministic().tolist() == [[1, 2]]


def test_action_distribution_hand_computed_tuple():
    # Tuple(Discrete 2, Box 1): p = [1/4, 3/4]; N(0, 1). Action (1, 0.0):
    # logp = ln .75 + (-.5 ln 2pi) = -0.287682 - 0.918939 = -1.206621
    space = spaces.Tuple((spaces.Discrete(2), spaces.Box(-1.0, 1.0, (1,), np.float32)))
    dist = ActionDistribution(torch.tensor([[0.0, LN3, 0.0, 0.0]]), space)
    actions = [torch.tensor([1]), torch.tensor([[0.0]])]
    torch.testing.assert_close(dist.logp(actions), torch.tensor([-1.2066206]))
    # H = 0.562335 + 1.418939
    torch.testing.assert_close(dist.entropy(), torch.tensor([0.5623351 + 1.4189385]))
    assert [a.tolist() for a in dist.deterministic()] == [[1], [[0.0]]]


@pytest.mark.parametrize(
    "space",
    [
        nested_dict_space(),
        spaces.Tuple(
            (
                spaces.Discrete(2),
                spaces.Tuple((spaces.Box(-1.0, 1.0, (3,), np.float32), spaces.Discrete(4))),
                spaces.Dict({"y": spaces.MultiDiscrete([3, 3]), "x": spaces.Box(0.0, 1.0, (1,), np.float32)}),
            )
        ),
    ],
    ids=["dict", "tuple_of_tuple_and_dict"],
)
def test_action_distribution_is_sum_over_leaves(space):
    from rlfleet.rl.spaces import leaf_spaces

    g = torch.Generator().manual_seed(3)
    leaves = leaf_spaces(space)
    sizes = [dist_input_size(s) for s in leaves]
    B = 6
    inputs_p = torch.randn(B, sum(sizes), generator=g)
    inputs_q = torch.randn(B, sum(sizes), generator=g)
    p, q = ActionDistribution(inputs_p, space), ActionDistribution(inputs_q, space)
    torch.manual_seed(3)
    actions = p.sample()
    assert len(actions) == len(leaves)

    # Reference: one torch.distributions object per leaf, built from its own slice.
    def refs(inputs):
        out = []
        for chunk, s in zip(torch.split(inputs, sizes, -1), leaves):
            if isinstance(s, spaces.Discrete):
                out.append([td.Categorical(logits=chunk)])
            elif isinstance(s, spaces.MultiDiscrete):
                out.append([td.Categorical(logits=c) for c in torch.split(chunk, s.nvec.tolist(), -1)])
            else:
                mean, log_std = chunk.chunk(2, -1)
                out.append([td.Independent(td.Normal(mean, log_std.exp()), 1)])
        return out

    ref_p, ref_q = refs(inputs_p), refs(inputs_q)
    expected_logp = torch.zeros(B)
    expected_entropy = torch.zeros(B)
    expected_kl = torch.zeros(B)
    for a, rp, rq, s in zip(actions, ref_p, ref_q, leaves):
        if isinstance(s, spaces.MultiDiscrete):
            assert a.shape == (B, len(s.nvec))
            expected_logp += sum(r.log_prob(a[:, i]) for i, r in enumerate(rp))
        else:
            assert a.shape == ((B,) if isinstance(s, spaces.Discrete) else (B, s.shape[0]))
            expected_logp += rp[0].log_prob(a)
        expected_entropy += sum(r.entropy() for r in rp)
        expected_kl += sum(td.kl_divergence(x, y) for x, y in zip(rp, rq))
    torch.testing.assert_close(p.logp(actions), expected_logp)
    torch.testing.assert_close(p.entropy(), expected_entropy)
    torch.testing.assert_close(p.kl(q), expected_kl)
    # And the same sum taken over our own leaves.
    torch.testing.assert_close(p.logp(actions), sum(d.logp(a) for d, a in zip(p.leaves, actions)))

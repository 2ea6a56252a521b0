"""The numpy acting path (rl/models/numpy_policy.py) computes what the torch module computes."""

import math

import gymnasium as gym
import numpy as np
import pytest
import torch
import tree
from gymnasium import spaces

from rlfleet.algorithms.dqn.module import QModuleSpec
from rlfleet.envs.testing import ImageEnv, NestedObsEnv
from rlfleet.rl.models.module import ModuleSpec, TorchActing
from rlfleet.rl.models.numpy_policy import NumpyPolicy, numpy_covers

B = 64


def masked_spaces():
    obs = spaces.Dict({"obs": spaces.Box(-1.0, 1.0, (3,), np.float32), "action_mask": spaces.MultiBinary(4)})
    return obs, spaces.Discrete(4)


CASES = {
    "cartpole": lambda: (gym.make("CartPole-v1").observation_space, gym.make("CartPole-v1").action_space),
    "pendulum": lambda: (gym.make("Pendulum-v1").observation_space, gym.make("Pendulum-v1").action_space),
    "nested": lambda: (NestedObsEnv().observation_space, NestedObsEnv().action_space),
    "multidiscrete": lambda: (
        spaces.Dict({"ids": spaces.MultiDiscrete([3, 4]), "flags": spaces.MultiBinary(3)}),
        spaces.MultiDiscrete([3, 2]),
    ),
    "masked": masked_spaces,
    "discrete_obs_from_5": lambda: (spaces.Discrete(4, start=5), spaces.Discrete(2)),
}
VARIANTS = {
    "separate": {},
    "shared": {"shared_encoder": True},
    "relu": {"activation": "relu"},
    "elu": {"activation": "elu"},
    "silu": {"activation": "silu"},
    "no_hidden": {"hidden_sizes": ()},
    "three_layers": {"hidden_sizes": (8, 16, 8)},
}


def obs_batch(space: gym.Space, n: int = B, seed: int = 0):
    space.seed(seed)
    samples = [space.sample() for _ in range(n)]
    batch = tree.map_structure(lambda *xs: np.stack(xs), *samples)
    if isinstance(batch, dict) and "action_mask" in batch:
        batch["action_mask"][:, 0] = 1  # some action stays legal
    return batch


def pair(case: str, **kw):
    """(torch module with random weights and a non-zero log-std, numpy policy loaded with them)."""
    obs_space, act_space = CASES[case]()
    spec = ModuleSpec(obs_space, act_space, **{"hidden_sizes": (16, 16), **kw})
    torch.manual_seed(1)
    module = spec.build()
    with torch.no_grad():
        for p in module.parameters():
            p.add_(0.3 * torch.randn_like(p))  # biases and log-std away from their zero init
    assert numpy_covers(spec)
    policy = spec.build_acting(seed=0)
    assert isinstance(policy, NumpyPolicy)
    policy.load({k: v.numpy() for k, v in module.state_dict().items()})
    return module, policy, obs_space


@pytest.mark.parametrize("variant", sorted(VARIANTS))
@pytest.mark.parametrize("case", sorted(CASES))
def test_values_greedy_actions_and_logp_match_the_torch_module(case, variant):
    module, policy, obs_space = pair(case, **VARIANTS[variant])
    obs = obs_batch(obs_space)
    tensors = tree.map_structure(torch.from_numpy, obs)
    np.testing.assert_allclose(policy.values(obs), module.compute_values(tensors).numpy(), rtol=1e-5, atol=1e-5)
    for mine, theirs in zip(policy.greedy(obs), module.forward_inference(tensors)):
        np.testing.assert_allclose(mine, theirs.numpy(), rtol=1e-5, atol=1e-5)
    out = policy.explore(obs)
    dist, values = module.forward_train(tensors)
    expected_logp = dist.logp([torch.from_numpy(a) for a in out["actions"]]).detach().numpy()
    np.testing.assert_allclose(out["logp"], expected_logp, rtol=1e-4, atol=1e-4)
    np.testing.assert_allclose(out["values"], values.detach().numpy(), rtol=1e-5, atol=1e-5)
    assert out["logp"].dtype == np.float32 and out["values"].dtype == np.float32
    if case == "masked":  # never an illegal action
        picked = obs["action_mask"][np.arange(B), out["actions"][0]]
        assert picked.all()


def head_bias_policy(act_space: gym.Space, bias: list[float], log_std: list[float] | None = None,
                     mask: bool = False) -> NumpyPolicy:
    """A policy whose head ignores the observation: its logits (or mean) are ``bias``."""
    obs_space = spaces.Box(-1.0, 1.0, (2,), np.float32)
    if mask:
        obs_space = spaces.Dict({"obs": obs_space, "action_mask": spaces.MultiBinary(len(bias))})
    policy = ModuleSpec(obs_space, act_space, hidden_sizes=()).build_acting(seed=3)
    weights = {"pi_head.weight": np.zeros((len(bias), 2), np.float32), "pi_head.bias": np.array(bias, np.float32),
               "vf_head.weight": np.zeros((1, 2), np.float32), "vf_head.bias": np.array([0.25], np.float32),
               "log_std": np.array(log_std or [], np.float32)}
    policy.load(weights)
    return policy


def test_categorical_draws_follow_the_probabilities():
    p = np.array([0.2, 0.3, 0.5])
    policy = head_bias_policy(spaces.Discrete(3), np.log(p).tolist())
    out = policy.explore(np.zeros((20_000, 2), np.float32))
    freq = np.bincount(out["actions"][0], minlength=3) / 20_000
    np.testing.assert_allclose(freq, p, atol=0.015)  # 3 standard errors of 0.5: 0.011
    np.testing.assert_allclose(out["logp"], np.log(p)[out["actions"][0]], rtol=1e-5)
    np.testing.assert_allclose(out["values"], 0.25)


def test_a_masked_action_is_never_drawn():
    policy = head_bias_policy(spaces.Discrete(3), [0.0, 5.0, 0.0], mask=True)
    obs = {"obs": np.zeros((5_000, 2), np.float32), "action_mask": np.tile(np.array([1, 0, 1], np.int8), (5_000, 1))}
    actions = policy.explore(obs)["actions"][0]
    assert set(np.unique(actions)) == {0, 2}
    assert abs(np.mean(actions == 0) - 0.5) < 0.03  # the two legal ones stay equally likely
    assert policy.greedy(obs)[0].tolist() == [0] * 5_000


def test_gaussian_draws_have_the_heads_mean_and_the_log_std():
    policy = head_bias_policy(spaces.Box(-1.0, 1.0, (2,), np.float32), [0.5, -1.0], log_std=[math.log(2.0), 0.0])
    out = policy.explore(np.zeros((20_000, 2), np.float32))
    actions = out["actions"][0]
    np.testing.assert_allclose(actions.mean(0), [0.5, -1.0], atol=0.05)  # se 0.014 and 0.007
    np.testing.assert_allclose(actions.std(0), [2.0, 1.0], rtol=0.03)
    z = (actions - np.array([0.5, -1.0])) / np.array([2.0, 1.0])
    expected = (-0.5 * z**2 - np.log([2.0, 1.0]) - 0.5 * math.log(2 * math.pi)).sum(-1)
    np.testing.assert_allclose(out["logp"], expected, rtol=1e-4, atol=1e-4)
    assert policy.greedy(np.zeros((1, 2), np.float32))[0].tolist() == [[0.5, -1.0]]


def test_the_same_seed_draws_the_same_initial_weights_and_actions():
    spec = ModuleSpec(*CASES["cartpole"]())
    obs = obs_batch(spec.observation_space)
    a, b, c = spec.build_acting(seed=5), spec.build_acting(seed=5), spec.build_acting(seed=6)
    np.testing.assert_array_equal(a.explore(obs)["values"], b.explore(obs)["values"])
    np.testing.assert_array_equal(a.explore(obs)["actions"][0], b.explore(obs)["actions"][0])
    assert not np.array_equal(a.values(obs), c.values(obs))


def test_initial_weights_start_near_uniform_like_the_torch_module():
    # Policy head gain 0.01: the initial policy is close to uniform; the value head is not.
    spec = ModuleSpec(*CASES["cartpole"]())
    policy = spec.build_acting(seed=0)
    logp = policy.explore(obs_batch(spec.observation_space))["logp"]
    np.testing.assert_allclose(logp, math.log(0.5), atol=0.02)
    assert np.abs(policy.values(obs_batch(spec.observation_space))).max() > 0.01


def test_weights_of_another_module_are_refused_naming_the_missing_key():
    policy = ModuleSpec(*CASES["cartpole"]()).build_acting(seed=0)
    with pytest.raises(ValueError, match=r"'CartPole-v1'|lack 'pi_mlp.0.weight'"):
        policy.load({"q_head.weight": np.zeros((2, 4), np.float32)})


@pytest.mark.parametrize("obs_space, act_space", [
    (ImageEnv().observation_space, ImageEnv().action_space),  # a CNN encoder
    (spaces.Box(0, 255, (84, 84, 4), np.uint8), spaces.Discrete(6)),
])
def test_modules_numpy_does_not_cover_act_through_torch(obs_space, act_space):
    spec = ModuleSpec(obs_space, act_space)
    assert not numpy_covers(spec)
    assert isinstance(spec.build_acting(seed=0), TorchActing)


def test_other_module_kinds_act_through_torch():
    obs_space, act_space = CASES["cartpole"]()
    q_spec = QModuleSpec(obs_space, act_space)
    assert isinstance(q_spec.build_acting(seed=0), TorchActing)

    class MySpec(ModuleSpec):  # a user's module: numpy knows nothing of its build()
        pass

    mine = MySpec(obs_space, act_space)
    assert isinstance(mine.build_acting(seed=0), TorchActing)

import gymnasium as gym
import numpy as np
import pytest
import torch
import tree
from gymnasium import spaces

from rlfleet.envs.testing import ImageEnv, NestedObsEnv
from rlfleet.rl.models.module import ModuleSpec, RLModule
from rlfleet.rl.spaces import UnsupportedSpaceError, actions_to_env, leaf_spaces

B = 5


def cartpole_spaces():
    env = gym.make("CartPole-v1")
    return env.observation_space, env.action_space


def pendulum_spaces():
    env = gym.make("Pendulum-v1")
    return env.observation_space, env.action_space


def env_spaces(env_cls):
    env = env_cls()
    return env.observation_space, env.action_space


CASES = {
    "cartpole": cartpole_spaces,
    "pendulum": pendulum_spaces,
    "nested": lambda: env_spaces(NestedObsEnv),
    "image32": lambda: env_spaces(ImageEnv),
    "atari84x84x4": lambda: (spaces.Box(0, 255, (84, 84, 4), np.uint8), spaces.Discrete(6)),
    "chw_float_image": lambda: (spaces.Box(0.0, 1.0, (3, 16, 16), np.float32), spaces.Discrete(2)),
    "multidiscrete": lambda: (
        spaces.Dict({"ids": spaces.MultiDiscrete([3, 4]), "flags": spaces.MultiBinary(3)}),
        spaces.MultiDiscrete([3, 2]),
    ),
}


def obs_batch(space: gym.Space, n: int = B, seed: int = 0):
    """n samples of ``space`` stacked leaf by leaf into tensors (B, ...)."""
    space.seed(seed)
    samples = [space.sample() for _ in range(n)]
    return tree.map_structure(lambda *xs: torch.as_tensor(np.stack(xs)), *samples)


def build(obs_space, act_space, **kw) -> RLModule:
    torch.manual_seed(0)
    return ModuleSpec(obs_space, act_space, hidden_sizes=(16, 16), **kw).build()


def expected_action_shape(space: gym.Space) -> tuple:
    if isinstance(space, spaces.Discrete):
        return (B,)
    if isinstance(space, spaces.MultiDiscrete):
        return (B, len(space.nvec))
    return (B, space.shape[0])


@pytest.mark.parametrize("case", list(CASES))
def test_forward_exploration_shapes(case):
    obs_space, act_space = CASES[case]()
    module = build(obs_space, act_space)
    out = module.forward_exploration(obs_batch(obs_space))
    actions, logp, values = out["actions"], out["logp"], out["values"]
    leaves = leaf_spaces(act_space)
    assert len(actions) == len(leaves)
    for a, s in zip(actions, leaves):
        assert a.shape == expected_action_shape(s)
    assert logp.shape == (B,)
    assert values.shape == (B,)
    assert torch.isfinite(logp).all() and torch.isfinite(values).all()


@pytest.mark.parametrize("case", list(CASES))
def test_sampled_logp_equals_forward_train_logp(case):
    obs_space, act_space = CASES[case]()
    module = build(obs_space, act_space)
    obs = obs_batch(obs_space)
    torch.manual_seed(1)
    out = module.forward_exploration(obs)
    actions, logp, values = out["actions"], out["logp"], out["values"]
    # Acting runs under inference_mode: clone to get ordinary tensors for autograd.
    actions = [a.clone() for a in actions]
    dist, train_values = module.forward_train(obs)
    torch.testing.assert_close(dist.logp(actions), logp.clone())
    torch.testing.assert_close(train_values, values.clone())
    assert train_values.shape == (B,)


def test_side_by_side_stacks_the_first_layer_and_block_diagonalises_the_rest():
    from torch import nn

    from rlfleet.rl.models.module import side_by_side

    def linear(weight, bias):
        layer = nn.Linear(len(weight[0]), len(weight))
        with torch.no_grad():
            layer.weight.copy_(torch.tensor(weight, dtype=torch.float32))
            layer.bias.copy_(torch.tensor(bias, dtype=torch.float32))
        return layer

    shared = linear([[1.0, 0.0], [0.0, 1.0]], [0.0, 0.0])
    pi = [shared, linear([[1.0, 2.0]], [0.5]), linear([[3.0]], [0.0])]
    vf = [shared, linear([[4.0, 5.0]], [-1.0]), linear([[6.0]], [1.0])]
    (w0, b0), (w1, b1), (w2, b2) = side_by_side(pi, vf)
    assert torch.equal(w0, shared.weight) and torch.equal(b0, shared.bias)
    assert w1.tolist() == [[1.0, 2.0], [4.0, 5.0]] and b1.tolist() == [0.5, -1.0]  # stacked: same input
    assert w2.tolist() == [[3.0, 0.0], [0.0, 6.0]] and b2.tolist() == [0.0, 1.0]  # each half its own
    # x = (1, 1): the policy's output 3 * (1 + 2 + 0.5) = 10.5, the value's 6 * (4 + 5 - 1) + 1 = 49
    x = torch.ones(1, 2)
    for weight, bias in ((w0, b0), (w1, b1), (w2, b2)):
        x = torch.nn.functional.linear(x, weight, bias)
    assert x.tolist() == [[10.5, 49.0]]


@pytest.mark.parametrize("shared, hidden", [(False, (16, 16)), (True, (16, 16)), (False, ()), (True, (8,))])
def test_acting_follows_weights_changed_in_place(shared, hidden):
    obs_space, act_space = spaces.Box(-1.0, 1.0, (5,)), spaces.Tuple((spaces.Discrete(3), spaces.Box(-1.0, 1.0, (2,))))
    torch.manual_seed(0)
    module = ModuleSpec(obs_space, act_space, hidden_sizes=hidden, shared_encoder=shared).build()
    obs = obs_batch(obs_space)

    def check():
        out = module.forward_exploration(obs)
        dist, values = module.forward_train(obs)
        torch.testing.assert_close(values.detach(), out["values"].clone())
        torch.testing.assert_close(dist.logp([a.clone() for a in out["actions"]]).detach(), out["logp"].clone())

    check()
    # loaded weights (what a runner gets) and an optimiser step both reach the acting path
    module.load_state_dict({k: v * 1.5 + 0.1 for k, v in module.state_dict().items()})
    check()
    optimiser = torch.optim.SGD(module.parameters(), lr=0.5)
    dist, values = module.forward_train(obs)
    (values.sum() - dist.entropy().sum()).backward()
    optimiser.step()
    check()


@pytest.mark.parametrize("case", list(CASES))
def test_forward_inference_is_the_deterministic_action(case):
    obs_space, act_space = CASES[case]()
    module = build(obs_space, act_space)
    obs = obs_batch(obs_space)
    greedy = module.forward_inference(obs)
    dist, _ = module.forward_train(obs)
    for g, d in zip(greedy, dist.deterministic()):
        torch.testing.assert_close(g.clone(), d.detach())


def test_compute_values_equals_forward_train_values():
    obs_space, act_space = cartpole_spaces()
    module = build(obs_space, act_space)
    obs = obs_batch(obs_space)
    torch.testing.assert_close(module.compute_values(obs).clone(), module.forward_train(obs)[1].detach())


def test_training_logp_reaches_policy_parameters_and_log_std():
    obs_space, act_space = pendulum_spaces()
    module = build(obs_space, act_space)
    obs = obs_batch(obs_space)
    actions = [a.clone() for a in module.forward_exploration(obs)["actions"]]
    dist, values = module.forward_train(obs)
    (dist.logp(actions).sum() + values.sum()).backward()
    assert module.log_std.grad is not None and module.log_std.grad.abs().sum() > 0
    assert module.pi_head.weight.grad.abs().sum() > 0
    assert module.vf_head.weight.grad.abs().sum() > 0


def test_box_action_starts_with_unit_std_and_near_zero_mean():
    obs_space, act_space = pendulum_spaces()
    module = build(obs_space, act_space)
    dist, _ = module.forward_train(obs_batch(obs_space))
    [gauss] = dist.leaves
    torch.testing.assert_close(gauss.std, torch.ones(B, 1))
    assert gauss.mean.abs().max() < 0.1  # policy head initialised with gain 0.01


def test_shared_encoder_shares_policy_and_value_mlp():
    obs_space, act_space = cartpole_spaces()
    shared = build(obs_space, act_space, shared_encoder=True)
    separate = build(obs_space, act_space)
    assert shared.vf_mlp is shared.pi_mlp
    assert separate.vf_mlp is not separate.pi_mlp
    n_shared = sum(p.numel() for p in shared.parameters())
    n_separate = sum(p.numel() for p in separate.parameters())
    assert n_shared < n_separate


def test_image_encoder_uses_channels_last_and_scales_uint8():
    module = build(*env_spaces(ImageEnv))
    [enc] = module.encoder.encoders
    assert enc.channels_last and enc.scale == pytest.approx(1 / 255)
    atari = build(spaces.Box(0, 255, (84, 84, 4), np.uint8), spaces.Discrete(6))
    assert atari.encoder.encoders[0].out_dim == 512  # Nature-DQN trunk for 84x84
    chw = build(spaces.Box(0.0, 1.0, (3, 16, 16), np.float32), spaces.Discrete(2))
    assert not chw.encoder.encoders[0].channels_last and chw.encoder.encoders[0].scale == 1.0


def test_discrete_obs_with_start_offset_is_one_hot_from_zero():
    space = spaces.Discrete(3, start=5)
    module = build(space, spaces.Discrete(2))
    out = module.encoder.encoders[0](torch.tensor([5, 7]))
    torch.testing.assert_close(out, torch.tensor([[1.0, 0.0, 0.0], [0.0, 0.0, 1.0]]))


# --- check_spaces ----------------------------------------------------------------------------

VEC = spaces.Box(-1.0, 1.0, (3,), np.float32)


@pytest.mark.parametrize(
    "obs_space, act_space, which, bad",
    [
        (spaces.Text(8), spaces.Discrete(2), "observation", "Text("),
        (spaces.Graph(VEC, None), spaces.Discrete(2), "observation", "Graph("),
        (spaces.Box(0.0, 1.0, (2, 3, 4, 5), np.float32), spaces.Discrete(2), "observation", "(2, 3, 4, 5)"),
        (spaces.Dict({"ok": VEC, "bad": spaces.Text(4)}), spaces.Discrete(2), "observation", "Text("),
        (VEC, spaces.Box(-1.0, 1.0, (2, 2), np.float32), "action", "(2, 2)"),
        (VEC, spaces.Text(5), "action", "Text("),
        (VEC, spaces.MultiBinary(3), "action", "MultiBinary(3)"),
        (VEC, spaces.MultiDiscrete([[2, 3], [4, 5]]), "action", "MultiDiscrete("),
        (VEC, spaces.Tuple((spaces.Discrete(2), spaces.Box(-1.0, 1.0, (), np.float32))), "action", "Box("),
    ],
    ids=["text_obs", "graph_obs", "4d_box_obs", "nested_text_obs", "2d_box_action", "text_action",
         "multibinary_action", "2d_multidiscrete_action", "nested_0d_box_action"],
)
def test_unsupported_spaces_are_refused_naming_env_and_space(obs_space, act_space, which, bad):
    with pytest.raises(UnsupportedSpaceError) as err:
        ModuleSpec(obs_space, act_space, env_name="my-sim-v0").build()
    msg = str(err.value)
    assert "'my-sim-v0'" in msg
    assert f"{which} space" in msg
    assert bad in msg


# --- actions_to_env --------------------------------------------------------------------------


def test_actions_to_env_clips_box_actions_to_bounds():
    space = spaces.Box(np.array([-2.0, 0.0], np.float32), np.array([2.0, 5.0], np.float32))
    leaves = [np.array([[3.0, -1.0], [-3.0, 6.0], [0.5, 2.5]], np.float32)]
    out = actions_to_env(leaves, space)
    np.testing.assert_array_equal(out, [[2.0, 0.0], [-2.0, 5.0], [0.5, 2.5]])
    assert all(space.contains(row) for row in out)
    # The batch keeps the unclipped sample.
    assert leaves[0][0, 0] == 3.0


def test_actions_to_env_single_discrete_leaf_is_returned_bare():
    out = actions_to_env([np.array([0, 1, 1])], spaces.Discrete(2))
    assert isinstance(out, np.ndarray)
    np.testing.assert_array_equal(out, [0, 1, 1])


def test_actions_to_env_rebuilds_tuple():
    space = spaces.Tuple((spaces.Discrete(3), spaces.Box(-1.0, 1.0, (1,), np.float32)))
    out = actions_to_env([np.array([2, 0]), np.array([[1.7], [-0.3]], np.float32)], space)
    assert isinstance(out, tuple) and len(out) == 2
    np.testing.assert_array_equal(out[0], [2, 0])
    np.testing.assert_allclose(out[1], [[1.0], [-0.3]])
    assert space.contains((int(out[0][0]), out[1][0]))


def test_actions_to_env_rebuilds_nested_dict_by_key():
    space = spaces.Dict(
        {
            "move": spaces.Box(-1.0, 1.0, (2,), np.float32),
            "fire": spaces.Discrete(2),
            "arm": spaces.Tuple((spaces.Discrete(4), spaces.Box(0.0, 1.0, (1,), np.float32))),
        }
    )
    # dm-tree leaf order: arm[0], arm[1], fire, move
    leaves = [
        np.array([3, 1]),
        np.array([[1.5], [0.25]], np.float32),
        np.array([1, 0]),
        np.array([[-2.0, 0.5], [0.1, 9.0]], np.float32),
    ]
    out = actions_to_env(leaves, space)
    assert set(out) == {"arm", "fire", "move"}
    np.testing.assert_array_equal(out["arm"][0], [3, 1])
    np.testing.assert_allclose(out["arm"][1], [[1.0], [0.25]])
    np.testing.assert_array_equal(out["fire"], [1, 0])
    np.testing.assert_allclose(out["move"], [[-1.0, 0.5], [0.1, 1.0]])


def test_sampled_nested_actions_become_valid_env_actions():
    obs_space, act_space = env_spaces(NestedObsEnv)
    module = build(obs_space, act_space)
    actions = module.forward_exploration(obs_batch(obs_space))["actions"]
    choice, value = actions_to_env([a.numpy() for a in actions], act_space)
    for i in range(B):
        assert act_space.contains((int(choice[i]), value[i]))


def test_actions_to_env_shifts_discrete_actions_by_start():
    # The head samples indices 0..n-1; the env's Discrete(3, start=-1) expects -1, 0, 1.
    out = actions_to_env([np.array([0, 1, 2])], spaces.Discrete(3, start=-1))
    np.testing.assert_array_equal(out, [-1, 0, 1])
    md = spaces.MultiDiscrete([2, 3], start=[1, 10])
    out = actions_to_env([np.array([[0, 0], [1, 2]])], md)
    np.testing.assert_array_equal(out, [[1, 10], [2, 12]])
    assert all(md.contains(row) for row in out)


@pytest.mark.parametrize("shape, last", [
    ((10, 10, 4), True), ((10, 10, 6), True),  # MinAtar Breakout, SpaceInvaders
    ((7, 7, 3), True), ((84, 84, 4), True), ((210, 160, 3), True),
    ((4, 84, 84), False), ((6, 10, 10), False), ((3, 16, 16), False),
])
def test_channels_axis_of_an_image(shape, last):
    from rlfleet.rl.models.module import is_channels_last

    assert is_channels_last(shape) is last
    module = build(spaces.Box(0, 1, shape, np.bool_ if shape[-1] == 6 else np.float32), spaces.Discrete(3))
    first_conv = module.encoder.encoders[0].cnn[0][0]
    assert first_conv.in_channels == (shape[-1] if last else shape[0])
    assert module.forward_exploration(torch.zeros(2, *shape))["actions"][0].shape == (2,)


def test_a_spec_named_where_it_lived_before_rl_models_still_loads():
    # Checkpoints written before the move name rlfleet.rl.module_spec / rlfleet.rl.module.
    from gymnasium import spaces as sp

    from rlfleet.rl.models.module import spec_from_dict, spec_to_dict
    from rlfleet.rl.models.spec import ModuleSpec

    spec = ModuleSpec(sp.Box(-1.0, 1.0, (3,), np.float32), sp.Discrete(2), hidden_sizes=(8,))
    for old in ("rlfleet.rl.module_spec:ModuleSpec", "rlfleet.rl.module:ModuleSpec"):
        assert spec_from_dict({**spec_to_dict(spec), "class": old}) == spec

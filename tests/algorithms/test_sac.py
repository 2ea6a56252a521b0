"""SAC: its losses against hand-computed numbers, the squashed Gaussian's log-prob against
torch's, optimiser groups that each move only their own parameters, targets that follow by
tau, and runs on continuous and discrete actions."""

from __future__ import annotations

import math

import gymnasium as gym
import numpy as np
import pytest
import torch
from gymnasium import spaces

from rlfleet.algorithms.sac import SACConfig, sac_losses
from rlfleet.algorithms.sac.module import squash_log_prob
from rlfleet.rl.models.module import ModuleSpec
from rlfleet.rl.spaces import UnsupportedSpaceError


def test_sac_losses_against_hand_computed_values():
    q = [torch.tensor([1.0, 2.0]), torch.tensor([1.5, 1.0])]
    target = torch.tensor([2.0, 0.0])
    q_pi, logp_pi = torch.tensor([0.5, -1.0]), torch.tensor([-1.0, 0.5])
    log_alpha = torch.tensor(math.log(0.5), requires_grad=True)
    losses, td_abs, metrics = sac_losses(q, target, torch.ones(2), q_pi, logp_pi, log_alpha, target_entropy=-1.0)
    # critic: 1/2 (mean(1, 4) + mean(0.25, 1)) = 1/2 (2.5 + 0.625)
    assert losses["critic"].item() == pytest.approx(1.5625)
    # actor: mean(0.5 * -1 - 0.5, 0.5 * 0.5 + 1) = mean(-1, 1.25)
    assert losses["actor"].item() == pytest.approx(0.125)
    # alpha: -log(0.5) * mean(-1 - 1, 0.5 - 1) = 0.6931 * -1.25
    assert losses["alpha"].item() == pytest.approx(-math.log(2.0) * 1.25)
    torch.testing.assert_close(td_abs, torch.tensor([0.75, 1.5]))
    assert metrics["losses/alpha"].item() == pytest.approx(0.5)
    # importance weights scale each row's squared error
    weighted, _, _ = sac_losses(q, target, torch.tensor([2.0, 0.0]), q_pi, logp_pi, log_alpha, target_entropy=-1.0)
    assert weighted["critic"].item() == pytest.approx(0.5 * (1.0 + 0.25))


def test_alpha_loss_raises_alpha_when_entropy_is_below_target():
    log_alpha = torch.tensor(0.0, requires_grad=True)
    losses, _, _ = sac_losses([torch.zeros(3)], torch.zeros(3), torch.ones(3), torch.zeros(3),
                              torch.full((3,), 2.0), log_alpha, target_entropy=-1.0)  # entropy -2 < -1
    losses["alpha"].backward()
    assert log_alpha.grad.item() < 0  # gradient descent raises log alpha


def test_squashed_log_prob_equals_torch_tanh_transform():
    torch.manual_seed(0)
    mean, std = torch.randn(5, 3), torch.rand(5, 3) + 0.1
    base = torch.distributions.Normal(mean, std)
    u = base.sample()
    ours = squash_log_prob(u, base.log_prob(u).sum(-1))
    tanh = torch.distributions.TransformedDistribution(base, [torch.distributions.TanhTransform()])
    theirs = tanh.log_prob(torch.tanh(u).clamp(-1 + 1e-6, 1 - 1e-6)).sum(-1)
    torch.testing.assert_close(ours, theirs, atol=2e-3, rtol=1e-4)


def small_config(**kw):
    base = dict(env="Pendulum-v1", seed=0, learning_starts=64, minibatch_size=32, buffer_size=2000)
    return SACConfig(**{**base, **kw})


def test_each_loss_reaches_only_its_optimiser_group():
    algo = small_config().build()
    try:
        algo.train()
        algo.train()
        learner = algo.learner_group.learner
        batch = algo.buffer.sample(32)
        batch.pop("indices")
        losses, _ = learner.compute_loss(learner.to_tensors(batch))
        assert set(losses) == {"actor", "critic", "alpha"} == set(learner.groups)
        for name, loss in losses.items():
            for other, params in learner.groups.items():
                grads = torch.autograd.grad(loss, params, retain_graph=True, allow_unused=True)
                reached = any(g is not None and bool(g.abs().sum() > 0) for g in grads)
                assert reached == (other == name), f"{name} loss reaches {other}: {reached}"
    finally:
        algo.stop()


def test_a_gradient_step_moves_every_group_and_the_targets_follow_by_tau():
    algo = small_config(replay_ratio=1 / 64).build()  # one gradient step per 64-step iteration
    try:
        learner = algo.learner_group.learner
        algo.train()  # 64 steps: learning starts at the end of it
        before = {k: v.clone() for k, v in learner.module.state_dict().items()}
        target_before = [p.clone() for p in learner.targets["critics"].parameters()]
        result = algo.train()
        assert result["learner/num_grad_steps"] == 1
        after = learner.module.state_dict()
        for prefix in ("actor_mlp", "actor_head", "critics.0", "critics.1", "log_alpha"):
            keys = [k for k in after if k.startswith(prefix)]
            assert keys and any(not torch.equal(before[k], after[k]) for k in keys), prefix
        for t0, t, o in zip(target_before, learner.targets["critics"].parameters(), learner.module.critics.parameters()):
            torch.testing.assert_close(t, t0 + 0.005 * (o - t0))
        for key in ("losses/critic_loss", "losses/actor_loss", "losses/alpha", "losses/grad_norm_actor",
                    "losses/grad_norm_critic", "losses/grad_norm_alpha"):
            assert np.isfinite(result[key]), key
    finally:
        algo.stop()


def test_fixed_alpha_keeps_the_temperature():
    algo = small_config(autotune_alpha=False, initial_alpha=0.2).build()
    try:
        for _ in range(3):
            result = algo.train()
        assert result["losses/alpha"] == pytest.approx(0.2)
        assert "losses/grad_norm_alpha" not in result
    finally:
        algo.stop()


def test_actions_stay_in_the_box_and_greedy_is_the_squashed_mean():
    spec = ModuleSpec(spaces.Box(-1.0, 1.0, (3,)), spaces.Box(np.array([0.0, -2.0]), np.array([1.0, 2.0])))
    from rlfleet.algorithms.sac.module import SACModuleSpec

    module = SACModuleSpec(**{f: getattr(spec, f) for f in ("observation_space", "action_space")}).build()
    obs = torch.randn(500, 3) * 5
    actions = module.forward_exploration(obs)["actions"][0]
    assert actions.shape == (500, 2)
    assert (actions[:, 0] >= 0).all() and (actions[:, 0] <= 1).all()
    assert (actions[:, 1] >= -2).all() and (actions[:, 1] <= 2).all()
    mean = module.actor_out(obs).chunk(2, -1)[0]
    torch.testing.assert_close(module.greedy_actions(obs)[0], module.to_env(torch.tanh(mean)))
    torch.testing.assert_close(module.from_env(module.to_env(torch.tanh(mean))), torch.tanh(mean))


@pytest.mark.parametrize("space, kind", [
    (spaces.Box(-np.inf, np.inf, (2,)), "Box"),
    (spaces.MultiDiscrete([2, 3]), "MultiDiscrete"),
])
def test_sac_refuses_actions_it_cannot_squash_naming_the_algorithms_that_fit(space, kind):
    from rlfleet.algorithms.sac import SAC

    spec = ModuleSpec(spaces.Box(-1.0, 1.0, (3,)), space, env_name="my-env")
    with pytest.raises(UnsupportedSpaceError, match=rf"SAC needs a Discrete or a bounded 1-D Box.*'my-env'.*"
                                                    rf"{kind} actions: .*ppo"):
        SAC.adapt_module_spec(SAC.__new__(SAC), spec)


def test_discrete_sac_trains_and_acts_legally_on_a_masked_env():
    algo = SACConfig(env="rlfleet/MaskedMaze-v0", seed=0, learning_starts=64, minibatch_size=32,
                     buffer_size=2000).build()
    try:
        for _ in range(3):
            result = algo.train()
        assert result["learner/num_grad_steps"] > 0 and np.isfinite(result["losses/critic_loss"])
        assert np.isfinite(algo.evaluate()["evaluation/episode_return_mean"])
    finally:
        algo.stop()


def test_checkpoint_round_trip_keeps_targets_noise_and_counters(tmp_path):
    algo = small_config().build()
    for _ in range(3):
        algo.train()
    algo.save(str(tmp_path))
    twin = small_config().build()
    twin.restore(str(tmp_path))
    a, b = algo.learner_group.learner, twin.learner_group.learner
    assert a.num_grad_steps == b.num_grad_steps > 0
    for x, y in zip(a.targets["critics"].state_dict().values(), b.targets["critics"].state_dict().values()):
        assert torch.equal(x, y)
    assert torch.equal(a.batch_noise(4, 1), b.batch_noise(4, 1))
    algo.stop()
    twin.stop()


def test_pendulum_cli_run_with_defaults(tmp_path):
    import subprocess
    import sys

    from tests.scripts.test_train_cli import TRAIN

    proc = subprocess.run([sys.executable, TRAIN, "--algo", "sac", "--env", "Pendulum-v1", "--defaults",
                           "--stop-timesteps", "256", "--set", "learning_starts=64", "--set", "minibatch_size=32",
                           "--logdir", str(tmp_path / "run"), "--quiet", "--eval"],
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert "evaluation: return" in proc.stdout and "done: 4 iterations, 256 env steps" in proc.stdout, proc.stdout
    assert (tmp_path / "run" / "checkpoint" / "model.safetensors").is_file()

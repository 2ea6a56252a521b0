"""TD3: its critic loss against hand-computed numbers, the policy delay (actor and targets
step on every second critic step), groups that move only their own parameters, bounded
noisy actions, refusals, checkpoints, and 2 learners equal to 1."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest
import torch
from gymnasium import spaces

from rlfleet.algorithms.td3 import TD3, TD3Config, td3_critic_loss
from rlfleet.algorithms.td3.module import TD3ModuleSpec
from rlfleet.rl.learner import LearnerFactory, LearnerGroup
from rlfleet.rl.models.module import ModuleSpec
from rlfleet.rl.spaces import UnsupportedSpaceError
from rlfleet.runtime import LocalRuntime
from rlfleet.runtime.ray_backend import RayRuntime
from tests.extras import needs_extra
from tests.fleet_envs import start_shared_ray, stop_shared_ray
from tests.rl.test_learner_group import first_update, tuned


def test_critic_loss_against_hand_computed_values():
    q = [torch.tensor([1.0, 2.0]), torch.tensor([1.5, 1.0])]
    loss, td_abs = td3_critic_loss(q, torch.tensor([2.0, 0.0]), torch.ones(2))
    assert loss.item() == pytest.approx((1 + 4) / 2 + (0.25 + 1) / 2)  # the sum of the two MSEs
    torch.testing.assert_close(td_abs, torch.tensor([0.75, 1.5]))
    weighted, _ = td3_critic_loss(q, torch.tensor([2.0, 0.0]), torch.tensor([0.0, 2.0]))
    assert weighted.item() == pytest.approx(4.0 + 1.0)


def small_config(**kw):
    return TD3Config(**{**dict(env="Pendulum-v1", seed=0, learning_starts=64, minibatch_size=32,
                               buffer_size=2000, replay_ratio=1 / 64), **kw})


def test_the_actor_and_the_targets_step_on_every_second_critic_step():
    algo = small_config().build()  # one gradient step per 64-step iteration
    try:
        learner = algo.learner_group.learner
        algo.train()  # 64 steps: learning starts with the first gradient step
        assert learner.num_grad_steps == 1
        for step in range(2, 6):
            actor = [p.clone() for p in learner.module.actor.parameters()]
            critic = [p.clone() for p in learner.module.critics.parameters()]
            target = [p.clone() for p in learner.targets["critics"].parameters()]
            result = algo.train()
            assert learner.num_grad_steps == step
            moved = lambda before, now: any(not torch.equal(a, b) for a, b in zip(before, now))  # noqa: E731
            assert moved(critic, learner.module.critics.parameters())
            assert moved(actor, learner.module.actor.parameters()) == (step % 2 == 0), step
            assert moved(target, learner.targets["critics"].parameters()) == (step % 2 == 0), step
            assert ("losses/grad_norm_actor" in result) == (step % 2 == 0)
    finally:
        algo.stop()


def test_each_loss_reaches_only_its_optimiser_group():
    algo = small_config(target_update_interval=1).build()
    try:
        algo.train()
        learner = algo.learner_group.learner
        batch = algo.buffer.sample(32)
        batch.pop("indices")
        losses, _ = learner.compute_loss(learner.to_tensors(batch))
        assert set(losses) == {"actor", "critic"} == set(learner.groups)
        for name, loss in losses.items():
            for other, params in learner.groups.items():
                grads = torch.autograd.grad(loss, params, retain_graph=True, allow_unused=True)
                reached = any(g is not None and bool(g.abs().sum() > 0) for g in grads)
                assert reached == (other == name), f"{name} loss reaches {other}"
    finally:
        algo.stop()


def test_exploration_stays_in_the_box_and_greedy_is_deterministic():
    spec = TD3ModuleSpec(spaces.Box(-1.0, 1.0, (3,)), spaces.Box(np.array([0.0, -2.0]), np.array([1.0, 2.0])),
                         exploration_noise=0.5)
    module = spec.build()
    obs = torch.randn(500, 3) * 5
    actions = module.forward_exploration(obs)["actions"][0]
    assert (actions[:, 0] >= 0).all() and (actions[:, 0] <= 1).all()
    assert (actions[:, 1] >= -2).all() and (actions[:, 1] <= 2).all()
    assert not torch.equal(actions, module.forward_exploration(obs)["actions"][0])
    torch.testing.assert_close(module.greedy_actions(obs)[0], module.greedy_actions(obs)[0])
    torch.testing.assert_close(module.bounds.from_env(module.greedy_actions(obs)[0]), module.actor(obs))


@pytest.mark.parametrize("space", [spaces.Discrete(3), spaces.Box(-np.inf, np.inf, (2,))])
def test_td3_refuses_actions_it_cannot_squash_naming_the_algorithms_that_fit(space):
    spec = ModuleSpec(spaces.Box(-1.0, 1.0, (3,)), space, env_name="my-env")
    with pytest.raises(UnsupportedSpaceError, match=rf"TD3 needs a bounded 1-D Box.*'my-env'.*"
                                                    rf"{type(space).__name__} actions: .*ppo"):
        TD3.adapt_module_spec(TD3.__new__(TD3), spec)


def test_checkpoint_round_trip_keeps_both_targets_and_the_noise(tmp_path):
    algo = small_config(replay_ratio=0.5).build()
    for _ in range(3):
        algo.train()
    algo.save(str(tmp_path))
    twin = small_config(replay_ratio=0.5).build()
    twin.restore(str(tmp_path))
    a, b = algo.learner_group.learner, twin.learner_group.learner
    assert a.num_grad_steps == b.num_grad_steps > 0
    for name in ("actor", "critics"):
        for x, y in zip(a.targets[name].state_dict().values(), b.targets[name].state_dict().values()):
            assert torch.equal(x, y)
    assert torch.equal(a.batch_noise(4, 1), b.batch_noise(4, 1))
    algo.stop()
    twin.stop()


@pytest.fixture(scope="module")
def shared_ray():
    start_shared_ray()
    yield
    stop_shared_ray()


def test_two_learners_equal_one_on_the_tuned_batch(shared_ray):
    config = tuned(TD3Config, "td3/HalfCheetah-v5.yaml", env="Pendulum-v1", learning_starts=256)
    batch, env_steps, state, spec, learner_cls, config = first_update(config)
    factory = LearnerFactory(learner_cls, module_spec=spec, config=dataclasses.replace(config, logdir=None))
    one = LearnerGroup(LocalRuntime(), factory, 0, num_gpus_per_learner=0.0)
    two = LearnerGroup(RayRuntime(), factory, 2, num_gpus_per_learner=0.0)
    try:
        one.set_state(state)
        two.set_state(state)
        before = one.get_weights()
        one_result, two_result = one.update(batch, env_steps=env_steps), two.update(batch, env_steps=env_steps)
        after = one.get_weights()
        rank0, rank1 = [r.value for r in two.group.call("get_weights")]
    finally:
        two.stop()
    assert one_result.metrics["learner/num_grad_steps"] == two_result.metrics["learner/num_grad_steps"] >= 2
    assert max(float(np.abs(after[k] - before[k]).max(initial=0.0)) for k in after) > 1e-4
    for k in after:
        assert np.array_equal(rank0[k], rank1[k]), k
        assert float(np.abs(rank0[k] - after[k]).max(initial=0.0)) <= 1e-5, k
    np.testing.assert_allclose(two_result.per_row["td_abs"], one_result.per_row["td_abs"], rtol=0, atol=1e-5)


@needs_extra("export", "onnxruntime")
def test_the_exported_policy_and_the_checkpoint_play_the_same_episodes(tmp_path):
    import json
    import subprocess
    import sys

    from tests.scripts.test_train_cli import REPO

    algo = small_config(replay_ratio=1.0).build()
    try:
        for _ in range(3):
            algo.train()
        checkpoint = tmp_path / "checkpoint"
        algo.save(str(checkpoint))
    finally:
        algo.stop()
    model = str(tmp_path / "policy.onnx")
    done = subprocess.run([sys.executable, "scripts/export.py", "--checkpoint", str(checkpoint), "--out", model],
                          cwd=REPO, capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    returns = {}
    for flag, source in (("--onnx", model), ("--checkpoint", str(checkpoint))):
        run = subprocess.run([sys.executable, "scripts/evaluate.py", flag, source, "--episodes", "3", "--seed", "3",
                              "--json"], cwd=REPO, capture_output=True, text=True)
        assert run.returncode == 0, run.stderr
        returns[flag] = json.loads(run.stdout)["returns"]
    np.testing.assert_allclose(returns["--onnx"], returns["--checkpoint"], rtol=1e-5)

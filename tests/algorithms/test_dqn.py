import pytest
import torch

from rlfleet.algorithms.dqn import DQNConfig, dqn_loss
from rlfleet.rl.spaces import UnsupportedSpaceError

Q_TAKEN = torch.tensor([1.0, 2.0])
Q_NEXT_TARGET = torch.tensor([[1.0, 3.0], [2.0, 0.0]])
Q_NEXT_ONLINE = torch.tensor([[5.0, 0.0], [0.0, 1.0]])
REWARDS = torch.tensor([1.0, 0.5])
DISCOUNTS = torch.tensor([0.5, 0.0])  # the second row terminated inside its n-step window
WEIGHTS = torch.tensor([1.0, 2.0])


def test_double_q_target_uses_online_argmax_and_target_values():
    # online argmax -> actions [0, 1]; target values there [1, 0]; targets [1.5, 0.5];
    # td [-0.5, 1.5]; huber(1): [0.125, 1.0]; weighted mean (0.125 + 2.0) / 2
    loss, td, metrics = dqn_loss(Q_TAKEN, Q_NEXT_TARGET, Q_NEXT_ONLINE, REWARDS, DISCOUNTS, WEIGHTS, huber_delta=1.0)
    torch.testing.assert_close(td, torch.tensor([-0.5, 1.5]))
    assert loss.item() == pytest.approx(1.0625)
    assert metrics["losses/td_error_abs"].item() == pytest.approx(1.0)


def test_plain_q_target_takes_the_target_max():
    # max target -> [3, 2]; targets [2.5, 0.5]; td [-1.5, 1.5]; huber [1, 1]; weighted [1, 2]
    loss, td, _ = dqn_loss(Q_TAKEN, Q_NEXT_TARGET, None, REWARDS, DISCOUNTS, WEIGHTS, huber_delta=1.0)
    torch.testing.assert_close(td, torch.tensor([-1.5, 1.5]))
    assert loss.item() == pytest.approx(1.5)


def test_no_gradient_flows_into_the_target():
    q_taken = Q_TAKEN.clone().requires_grad_()
    q_next = Q_NEXT_TARGET.clone().requires_grad_()
    loss, _, _ = dqn_loss(q_taken, q_next, None, REWARDS, DISCOUNTS, WEIGHTS, huber_delta=1.0)
    loss.backward()
    assert q_next.grad is None and q_taken.grad is not None


def small_config(**kw):
    base = dict(env="CartPole-v1", seed=0, num_envs_per_runner=4, rollout_fragment_length=16, learning_starts=64,
                minibatch_size=16, buffer_size=2000, hidden_sizes=(16,), target_update_interval=5)
    return DQNConfig(**{**base, **kw})


def test_replay_ratio_sets_gradient_steps_per_env_step():
    algo = small_config(replay_ratio=0.25).build()
    try:
        results = [algo.train() for _ in range(4)]  # 64 env steps per iteration
        steps = [r.get("learner/num_grad_steps", 0) for r in results]
        assert steps == [16, 16, 16, 16]
        algo2 = small_config(replay_ratio=0.1).build()  # 6.4 per iteration: the fraction carries over
        steps2 = [algo2.train().get("learner/num_grad_steps", 0) for _ in range(5)]
        algo2.stop()
        assert sum(steps2) == 32 and set(steps2) <= {6, 7}
    finally:
        algo.stop()


def test_target_network_follows_after_the_interval():
    algo = small_config(replay_ratio=1 / 64, target_update_interval=3).build()  # one step per iteration
    try:
        learner = algo.learner_group.learner
        for i in range(1, 7):
            algo.train()
            same = all(torch.equal(a, b) for a, b in zip(learner.module.parameters(), learner.targets["module"].parameters()))
            assert same == (learner.num_grad_steps % 3 == 0), (i, learner.num_grad_steps)
    finally:
        algo.stop()


def test_soft_target_update_moves_by_tau():
    algo = small_config(tau=0.25, target_update_interval=1).build()
    try:
        learner = algo.learner_group.learner
        before = [p.clone() for p in learner.targets["module"].parameters()]
        with torch.no_grad():
            for p in learner.module.parameters():
                p.add_(1.0)
        learner.update_targets(learner.config.tau)
        for b, t, o in zip(before, learner.targets["module"].parameters(), learner.module.parameters()):
            torch.testing.assert_close(t, b + 0.25 * (o - b))
    finally:
        algo.stop()


def test_epsilon_reaches_runners_with_the_weights():
    algo = small_config(epsilon_initial=1.0, epsilon_final=0.1, epsilon_timesteps=128).build()
    try:
        for _ in range(3):
            result = algo.train()
        runner = algo.env_runner_group.group.actors[0]
        assert result["learner/epsilon"] == pytest.approx(0.1)
        assert runner.policy.module.epsilon.item() == pytest.approx(0.1)  # a Q-network acts through torch
    finally:
        algo.stop()


def test_dqn_refuses_continuous_actions_naming_the_algorithms_that_fit():
    with pytest.raises(UnsupportedSpaceError, match=r"DQN needs a Discrete action space.*Pendulum-v1.*Box actions: (\w+, )*ppo"):
        DQNConfig(env="Pendulum-v1").build()


def test_dqn_checkpoint_round_trip_keeps_target_and_counters(tmp_path):
    algo = small_config().build()
    for _ in range(3):
        algo.train()
    algo.save(str(tmp_path))
    twin = small_config().build()
    twin.restore(str(tmp_path))
    a, b = algo.learner_group.learner, twin.learner_group.learner
    assert a.num_grad_steps == b.num_grad_steps > 0
    for x, y in zip(a.targets["module"].state_dict().values(), b.targets["module"].state_dict().values()):
        assert torch.equal(x, y)
    assert twin.env_steps == algo.env_steps and twin.epsilon() == algo.epsilon()
    algo.stop()
    twin.stop()


def test_dueling_and_prioritized_dqn_learn_the_corridor():
    from rlfleet.envs.testing import CorridorEnv

    algo = DQNConfig(env=CorridorEnv, seed=0, num_envs_per_runner=4, rollout_fragment_length=16, learning_starts=64,
                     minibatch_size=32, buffer_size=5000, hidden_sizes=(32,), activation="relu", lr=1e-3,
                     dueling=True, prioritized_replay=True, n_step=3, target_update_interval=50,
                     epsilon_timesteps=1000, epsilon_final=0.02, replay_ratio=0.5).build()
    try:
        for _ in range(40):
            algo.train()
        assert algo.evaluate()["evaluation/episode_return_mean"] == pytest.approx(0.96, abs=1e-6)
    finally:
        algo.stop()


def test_the_old_name_of_minibatch_size_is_answered_with_the_new_one():
    from rlfleet.rl.config import ConfigError

    with pytest.raises(ConfigError, match="key 'train_batch_size' of dqn is now 'minibatch_size'"):
        DQNConfig.from_dict({"train_batch_size": 32}, source="my.yaml")

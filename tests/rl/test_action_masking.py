"""Action masking: hand-computed masked log-probabilities, entropies and DQN targets; the
mask kept out of the encoder and the normaliser; envs whose masks leave no legal action
refused; and every algorithm sampling, training and evaluating on envs that raise on an
illegal action."""

from __future__ import annotations

import math

import gymnasium as gym
import numpy as np
import pytest
import torch
from gymnasium import spaces

from rlfleet.algorithms.dqn import DQNConfig
from rlfleet.algorithms.dqn.learner import dqn_loss
from rlfleet.algorithms.dqn.module import QModuleSpec
from rlfleet.algorithms.impala import IMPALAConfig
from rlfleet.algorithms.ppo import PPOConfig
from rlfleet.envs import EnvContractError
from rlfleet.envs.masked import IllegalActionError, MaskedChoiceEnv, MaskedMazeEnv
from rlfleet.rl.connectors import MeanStdFilter
from rlfleet.rl.models.distributions import ActionDistribution
from rlfleet.rl.models.module import ModuleSpec
from rlfleet.rl.spaces import UnsupportedSpaceError

LN2, LN3 = math.log(2.0), math.log(3.0)


def masked_obs_space(n: int, obs_dim: int = 4, mask_dtype=np.int8) -> spaces.Dict:
    return spaces.Dict({"observation": spaces.Box(-1.0, 1.0, (obs_dim,), np.float32),
                        "action_mask": spaces.Box(0, 1, (n,), mask_dtype)})


# --- distributions ----------------------------------------------------------------------


def test_masked_categorical_hand_computed_logp_and_entropy():
    # logits [1, 2, 3], action 1 illegal: p = [e/(e+e^3), 0, e^3/(e+e^3)] = [1/(1+e^2), 0, e^2/(1+e^2)]
    dist = ActionDistribution(torch.tensor([[1.0, 2.0, 3.0]]), spaces.Discrete(3), mask=torch.tensor([[1, 0, 1]]))
    p0 = 1.0 / (1.0 + math.e**2)
    p2 = 1.0 - p0
    torch.testing.assert_close(dist.logp([torch.tensor([0])]), torch.tensor([math.log(p0)]))
    torch.testing.assert_close(dist.logp([torch.tensor([2])]), torch.tensor([math.log(p2)]))
    # H = -(p0 ln p0 + p2 ln p2) = 0.119203 * 2.126928 + 0.880797 * 0.126928 = 0.365334
    torch.testing.assert_close(dist.entropy(), torch.tensor([-(p0 * math.log(p0) + p2 * math.log(p2))]))
    assert dist.entropy().item() == pytest.approx(0.365334, abs=1e-6)
    assert dist.logp([torch.tensor([1])]).item() < -1e30  # the illegal action has no probability
    assert dist.deterministic()[0].tolist() == [2]


def test_one_legal_action_has_log_prob_zero_entropy_zero_and_finite_gradients():
    logits = torch.tensor([[5.0, -1.0, 2.0], [0.0, 0.0, 0.0]], requires_grad=True)
    mask = torch.tensor([[0, 1, 0], [1, 1, 1]])
    dist = ActionDistribution(logits, spaces.Discrete(3), mask=mask)
    logp = dist.logp([torch.tensor([1, 0])])
    entropy = dist.entropy()
    torch.testing.assert_close(logp, torch.tensor([0.0, -LN3]))
    torch.testing.assert_close(entropy, torch.tensor([0.0, LN3]))
    (logp.sum() + entropy.sum()).backward()
    assert torch.isfinite(logits.grad).all()
    assert logits.grad[0].abs().max() == 0.0  # nothing to learn where only one action is legal
    other = ActionDistribution(torch.tensor([[1.0, 9.0, 3.0], [1.0, 2.0, 3.0]]), spaces.Discrete(3), mask=mask)
    assert torch.isfinite(dist.kl(other)).all() and dist.kl(other)[0].item() == 0.0


def test_masked_multi_discrete_masks_each_sub_action():
    # nvec [2, 3]: sub-action 0 logits [0, ln 3] both legal -> p = [1/4, 3/4];
    # sub-action 1 logits [0, 0, 0] with the first illegal -> p = [0, 1/2, 1/2]
    space = spaces.MultiDiscrete([2, 3])
    dist = ActionDistribution(torch.tensor([[0.0, LN3, 0.0, 0.0, 0.0]]), space,
                              mask=torch.tensor([[1, 1, 0, 1, 1]]))
    torch.testing.assert_close(dist.logp([torch.tensor([[1, 2]])]), torch.tensor([math.log(0.75) - LN2]))
    torch.testing.assert_close(dist.entropy(), torch.tensor([0.5623351 + LN2]))
    torch.manual_seed(0)
    samples = ActionDistribution(torch.zeros(5000, 5), space, mask=torch.tensor([[1, 1, 0, 1, 1]]).expand(5000, 5))
    assert (samples.sample()[0][:, 1] != 0).all()


def test_sampling_never_picks_an_illegal_action():
    torch.manual_seed(0)
    mask = torch.rand(20_000, 6) < 0.3
    mask[torch.arange(20_000), torch.randint(6, (20_000,))] = True  # at least one legal
    logits = torch.randn(20_000, 6) * 3
    actions = ActionDistribution(logits, spaces.Discrete(6), mask=mask).sample()[0]
    assert mask[torch.arange(20_000), actions].all()


# --- the module: mask applied, kept out of the encoder -------------------------------------


def test_the_mask_is_not_an_encoder_input_unless_asked():
    obs_space = masked_obs_space(5)
    plain = ModuleSpec(obs_space, spaces.Discrete(5)).build()
    assert plain.encoder.out_dim == 4
    assert ModuleSpec(obs_space, spaces.Discrete(5), encode_mask=True).build().encoder.out_dim == 9
    obs = {"observation": torch.zeros(2, 4), "action_mask": torch.tensor([[0, 0, 1, 0, 0], [1, 1, 0, 0, 0]])}
    greedy = plain.forward_inference(obs)[0]
    assert greedy[0].item() == 2 and greedy[1].item() in (0, 1)
    dist, _ = plain.forward_train(obs)
    torch.testing.assert_close(dist.logp([torch.tensor([2, 1])])[0], torch.tensor(0.0))
    # The same observation with another mask gives the same features: the mask is not read.
    other = {**obs, "action_mask": torch.ones(2, 5, dtype=torch.int8)}
    torch.testing.assert_close(plain.features(obs), plain.features(other))


@pytest.mark.parametrize("action_space,mask_shape,message", [
    (spaces.Box(-1, 1, (2,)), (2,), r"'masked': an action_mask needs a Discrete or MultiDiscrete action space"),
    (spaces.Discrete(5), (4,), r"'masked': action_mask space .* must be a Box or MultiBinary of shape \(5,\)"),
    (spaces.MultiDiscrete([2, 3]), (3,), r"must be a Box or MultiBinary of shape \(5,\): the sub-actions' masks"),
])
def test_a_mask_that_does_not_fit_the_action_space_is_refused(action_space, mask_shape, message):
    obs_space = spaces.Dict({"observation": spaces.Box(-1, 1, (3,)), "action_mask": spaces.Box(0, 1, mask_shape, np.int8)})
    with pytest.raises(UnsupportedSpaceError, match=message):
        ModuleSpec(obs_space, action_space, env_name="masked").build()


def test_the_normaliser_leaves_a_float_mask_alone():
    space = masked_obs_space(3, obs_dim=2, mask_dtype=np.float32)
    filt = MeanStdFilter(space)
    obs = {"observation": np.array([[10.0, -3.0], [12.0, 5.0]], np.float32),
           "action_mask": np.array([[1.0, 0.0, 1.0], [0.0, 1.0, 0.0]], np.float32)}
    out = filt(obs)
    np.testing.assert_array_equal(out["action_mask"], obs["action_mask"])
    np.testing.assert_allclose(out["observation"][:, 0], [-1.0, 1.0], atol=1e-6)


# --- DQN ----------------------------------------------------------------------------------


def test_dqn_target_ignores_an_illegal_next_action_with_the_highest_value():
    q_taken = torch.tensor([0.5, 0.5])
    q_next_target = torch.tensor([[10.0, 1.0, 2.0], [10.0, 1.0, 2.0]])
    rewards, discounts, weights = torch.tensor([1.0, 1.0]), torch.tensor([0.9, 0.9]), torch.ones(2)
    legal = torch.tensor([[False, True, True], [False, False, False]])  # row 1: the game is over
    # max over legal actions: r + 0.9 * 2 = 2.8; no legal action: no future, target = r = 1
    _, td, _ = dqn_loss(q_taken, q_next_target, None, rewards, discounts, weights, huber_delta=1.0, next_legal=legal)
    torch.testing.assert_close(td, torch.tensor([0.5 - 2.8, 0.5 - 1.0]))
    # double Q: the online net's argmax over legal actions is action 1 (9 is illegal)
    q_next_online = torch.tensor([[9.0, 3.0, 1.0], [9.0, 3.0, 1.0]])
    _, td, _ = dqn_loss(q_taken, q_next_target, q_next_online, rewards, discounts, weights, huber_delta=1.0,
                        next_legal=legal)
    torch.testing.assert_close(td, torch.tensor([0.5 - (1.0 + 0.9 * 1.0), 0.5 - 1.0]))
    # without a mask the illegal 10 would have been the target
    _, td, _ = dqn_loss(q_taken, q_next_target, None, rewards, discounts, weights, huber_delta=1.0)
    torch.testing.assert_close(td, torch.tensor([0.5 - 10.0, 0.5 - 10.0]))


@pytest.mark.parametrize("epsilon", [0.0, 0.5, 1.0])
def test_epsilon_greedy_never_picks_an_illegal_action(epsilon):
    torch.manual_seed(0)
    module = QModuleSpec(masked_obs_space(6), spaces.Discrete(6)).build()
    module.epsilon.fill_(epsilon)
    mask = torch.rand(10_000, 6) < 0.3
    mask[torch.arange(10_000), torch.randint(6, (10_000,))] = True
    obs = {"observation": torch.randn(10_000, 4).clamp(-1, 1), "action_mask": mask.to(torch.int8)}
    actions = module.forward_exploration(obs)["actions"][0]
    assert mask[torch.arange(10_000), actions].all()
    if epsilon == 1.0:  # random actions are uniform over the legal ones
        only_two = torch.zeros(10_000, 6, dtype=torch.int8)
        only_two[:, [1, 4]] = 1
        actions = module.forward_exploration({**obs, "action_mask": only_two})["actions"][0]
        assert set(actions.tolist()) == {1, 4} and abs((actions == 1).float().mean().item() - 0.5) < 0.03
    greedy = module.forward_inference(obs)[0]
    assert mask[torch.arange(10_000), greedy].all()


# --- the runner refuses a mask with no legal action ---------------------------------------


class NoLegalAtStep3(gym.Env):
    observation_space = masked_obs_space(3, obs_dim=1)
    action_space = spaces.Discrete(3)

    def reset(self, *, seed=None, options=None):
        self.t = 0
        return self._obs(), {}

    def _obs(self):
        mask = np.array([0, 0, 0] if self.t == 3 else [1, 1, 0], np.int8)
        return {"observation": np.zeros(1, np.float32), "action_mask": mask}

    def step(self, action):
        assert action in (0, 1)
        self.t += 1
        return self._obs(), 0.0, False, self.t >= 10, {}


def test_a_mask_with_no_legal_action_is_named_with_the_env_and_the_step():
    algo = PPOConfig(env=NoLegalAtStep3, num_envs_per_runner=2, rollout_fragment_length=8, minibatch_size=16).build()
    try:
        with pytest.raises(EnvContractError, match=r"env 'NoLegalAtStep3' \(sub-env 0\) returned an action_mask with "
                                                   r"no legal action at step 3 of its episode: \[0 0 0\]"):
            algo.train()
    finally:
        algo.stop()


# --- every algorithm on envs that raise on an illegal action ------------------------------

QUICK = {"num_envs_per_runner": 8, "rollout_fragment_length": 32, "env_error_retries": 0, "seed": 3}


def make(algo: str, env: str, env_config: dict, **extra):
    configs = {
        "ppo": lambda: PPOConfig(minibatch_size=64, num_epochs=2, **QUICK, **extra),
        "impala": lambda: IMPALAConfig(**QUICK, **extra),
        "dqn": lambda: DQNConfig(learning_starts=256, minibatch_size=32, replay_ratio=0.25,
                                 epsilon_timesteps=2000, **QUICK, **extra),
    }
    config = configs[algo]()
    config.env, config.env_config = env, env_config
    return config.build()


def train_and_evaluate(algo, env_steps: int) -> dict:
    try:
        while True:
            result = algo.train()
            if result["env_steps"] >= env_steps:
                break
        assert result["num_env_errors"] == 0  # with env_error_retries 0 any raise ends the run instead
        return {**result, **algo.evaluate()}
    finally:
        algo.stop()


@pytest.mark.parametrize("algo,env_config", [
    ("ppo", {}), ("ppo", {"nvec": [3, 4, 2]}), ("impala", {}), ("impala", {"nvec": [3, 4, 2]}), ("dqn", {}),
])
def test_every_algorithm_samples_trains_and_evaluates_without_an_illegal_action(algo, env_config):
    result = train_and_evaluate(make(algo, "rlfleet/MaskedChoice-v0", env_config), 4096)
    assert result["evaluation/num_episodes"] >= 10


@pytest.mark.learning
@pytest.mark.parametrize("algo,env_config", [
    ("ppo", {}), ("ppo", {"nvec": [3, 4, 2]}), ("impala", {}), ("impala", {"nvec": [3, 4, 2]}), ("dqn", {}),
])
def test_100k_steps_of_training_without_an_illegal_action(algo, env_config):
    result = train_and_evaluate(make(algo, "rlfleet/MaskedChoice-v0", env_config, evaluation_num_episodes=200), 100_000)
    # The target is shown one-hot, so a trained policy earns about 1 a step: an episode ends
    # with probability 0.05 a step or at step 20, E[length] = sum_{t<20} 0.95^t = 12.83.
    best = sum(0.95**t for t in range(20))
    env = MaskedChoiceEnv(**env_config)  # against choosing uniformly among the legal actions
    random_returns = []
    for seed in range(200):
        obs, _ = env.reset(seed=seed)
        rng, total, done = np.random.default_rng(seed), 0.0, False
        while not done:
            legal = [np.flatnonzero(m) for m in np.split(obs["action_mask"], np.cumsum(env.nvec)[:-1])]
            action = [int(rng.choice(x)) for x in legal]
            obs, r, term, trunc, _ = env.step(action[0] if env.discrete else action)
            total, done = total + r, term or trunc
        random_returns.append(total)
    if env.discrete:
        assert result["evaluation/episode_return_mean"] >= 0.9 * best
        assert result["evaluation/episode_return_mean"] > np.mean(random_returns) + 1.0
    else:  # sub-actions of 2-4 choices often have one legal: random play already earns 0.8 a step
        assert result["evaluation/episode_return_mean"] > np.mean(random_returns)


def test_the_maze_is_connected_and_its_optimal_return_is_hand_checked():
    env = MaskedMazeEnv()
    # 31 free cells besides the goal; shortest distances to it, by hand on the default maze:
    distances = [12, 13, 14, 12, 11, 10,  # row 0: 12 13 14 # 12 11 10
                 11, 15, 13, 9,  # row 1: 11 # 15 # 13 # 9
                 10, 16, 15, 14, 8,  # row 2: 10 # 16 15 14 # 8
                 9, 7,  # row 3: 9 # # # # # 7
                 8, 7, 6, 4, 5, 6,  # row 4: 8 7 6 # 4 5 6
                 5, 3,  # row 5: # # 5 # 3 # #
                 6, 5, 4, 3, 2, 1]  # row 6: 6 5 4 3 2 1 G
    assert len(env.free) - 1 == len(distances)
    assert env.optimal_return() == pytest.approx(1.0 - 0.02 * (264 / 31 - 1)) == pytest.approx(
        np.mean([1.0 - 0.02 * (d - 1) for d in distances]))
    obs, _ = env.reset(seed=0)
    legal = np.flatnonzero(obs["action_mask"])
    assert 1 <= len(legal) <= 4 and set(legal) == set(env.neighbours[env.pos])
    illegal = next(a for a in range(49) if a not in legal)
    with pytest.raises(IllegalActionError, match=f"illegal move from cell {env.pos} to cell {illegal}"):
        env.step(illegal)
    unmasked = MaskedMazeEnv(mask=False)
    obs, _ = unmasked.reset(seed=0)
    where = unmasked.pos
    obs, reward, *_ = unmasked.step(illegal if illegal not in unmasked.neighbours[where] else 48)
    assert unmasked.pos == where and reward == -0.02 and obs.shape == (49,)

"""The multi-agent runner (rl/runners/multi_agent_runner.py) on a scripted env whose agents join
late, leave early and are cut by a time limit: every column, reward, episode end and
bootstrap value by hand, and GAE per agent against hand-computed advantages."""

from __future__ import annotations

import re

import numpy as np
import pytest
import torch
from gymnasium import spaces

from rlfleet.envs.multi_agent import MultiAgentCreator, MultiAgentEnvError, TurnBased
from rlfleet.rl.models.module import ModuleSpec
from rlfleet.rl.runners.multi_agent_runner import MultiAgentEnvRunner, PolicyMapping
from rlfleet.rl.postprocessing import compute_gae
from tests.extras import require_extra

OBS = spaces.Box(-10.0, 10.0, (1,), np.float32)
ACT = spaces.Discrete(2)


class Scripted:
    """4 env steps per episode. k=0: 'a' acts alone, +1 to a. k=1: 'b' joins; both act;
    +1 to a, +2 to b; 'a' terminates. k=2: b acts, +2. k=3: b acts, +2 to b and +5 to the
    departed a (counted in its return, trained on by nobody); b is truncated.
    Observations are [k]."""

    possible_agents = ["a", "b"]

    def observation_space(self, agent):
        return OBS

    def action_space(self, agent):
        return ACT

    def reset(self, seed=None, options=None):
        self.k = 0
        return {"a": self._o(0)}, {}

    def _o(self, k):
        return np.array([k], np.float32)

    def step(self, actions):
        k = self.k
        expected = {0: {"a"}, 1: {"a", "b"}, 2: {"b"}, 3: {"b"}}[k]
        assert set(actions) == expected, (k, actions)
        self.k += 1
        o = self._o(self.k)
        if k == 0:
            return {"a": o, "b": o}, {"a": 1.0}, {}, {}, {}
        if k == 1:
            return {"a": o, "b": o}, {"a": 1.0, "b": 2.0}, {"a": True, "b": False}, {}, {}
        if k == 2:
            return {"b": o}, {"b": 2.0}, {"b": False}, {"b": False}, {}
        return {"b": o}, {"b": 2.0, "a": 5.0}, {"b": False}, {"b": True}, {}

    def close(self):
        pass


@pytest.fixture
def runner():
    r = MultiAgentEnvRunner(env_creator=Scripted, specs={"default": ModuleSpec(OBS, ACT)},
                            mapping=PolicyMapping(None), num_envs=1, fragment_length=2, seed=0)
    yield r
    r.stop()


def value(runner, k):
    with torch.no_grad():
        return float(runner.modules["default"].compute_values(torch.tensor([[float(k)]])))


def test_agents_that_join_late_leave_early_and_are_truncated_make_exact_columns(runner):
    first = runner.sample()  # k=0,1: a's two steps are complete; b's first waits for its next turn
    b = first.batch["default"]
    assert b["rewards"].T.tolist() == [[1.0, 1.0]]
    assert b["terminated"].T.tolist() == [[False, True]] and b["is_first"].T.tolist() == [[True, False]]
    np.testing.assert_allclose(b["next_values"][:, 0], [value(runner, 1), 0.0], rtol=1e-5, atol=1e-6)  # V(s1), then no future
    np.testing.assert_allclose(b["values"][:, 0], [value(runner, 0), value(runner, 1)], rtol=1e-5, atol=1e-6)
    assert first.episode_returns == [] and first.env_steps == 2

    second = runner.sample()  # k=2,3: b's steps at k=1 and k=2 are complete; its k=3 step waits in the leftover
    b = second.batch["default"]
    assert b["rewards"].T.tolist() == [[2.0, 2.0]] and b["is_first"].T.tolist() == [[True, False]]
    np.testing.assert_allclose(b["next_values"][:, 0], [value(runner, 2), value(runner, 3)], rtol=1e-5, atol=1e-6)
    assert b["obs"][:, 0, 0].tolist() == [1.0, 2.0]
    # the episode: a earned 1 + 1 + 5 (the last after it left), b 2 + 2 + 2
    assert second.episode_returns == [13.0] and second.episode_lengths == [4]
    assert second.agent_returns == {"a": [7.0], "b": [6.0]}

    runner.sample()  # k=4,5 (episode 2): a's column again
    # b's truncated k=3 step of episode 1 (left over), then all of b's episode 2: two columns
    fourth = runner.sample()
    b = fourth.batch["default"]
    assert b["obs"][:, :, 0].T.tolist() == [[3.0, 1.0], [2.0, 3.0]]
    assert b["truncated"].T.tolist() == [[True, False], [False, True]] and not b["terminated"].any()
    assert b["is_first"].T.tolist() == [[False, True], [False, False]]
    np.testing.assert_allclose(b["next_values"][:, 0], [value(runner, 4), value(runner, 2)], rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(b["next_values"][1, 1], value(runner, 4), rtol=1e-5, atol=1e-6)  # V(final obs) at the cut

    # GAE per agent, by hand: gamma 0.9, lambda 0.8; the truncation stops the recursion
    v, nv, r = b["values"][:, 0], b["next_values"][:, 0], b["rewards"][:, 0]
    adv, _ = compute_gae(b["rewards"], b["values"], b["next_values"], b["terminated"], b["truncated"],
                         gamma=0.9, lam=0.8)
    a1 = r[1] + 0.9 * nv[1] - v[1]
    a0 = r[0] + 0.9 * nv[0] - v[0]  # no 0.9 * 0.8 * a1: the episode ended at t=0
    np.testing.assert_allclose(adv[:, 0], [a0, a1], rtol=1e-5, atol=1e-6)


def test_separate_policies_get_their_own_batches_and_weights():
    specs = {"pa": ModuleSpec(OBS, ACT), "pb": ModuleSpec(OBS, ACT)}
    r = MultiAgentEnvRunner(env_creator=Scripted, specs=specs, mapping=PolicyMapping({"a": "pa", "b": "pb"}),
                            num_envs=2, fragment_length=2, seed=0)
    try:
        zeros = {k: np.zeros_like(v.numpy()) for k, v in r.modules["pb"].state_dict().items()}
        r.set_weights({"pb": zeros}, 3)
        first, second = r.sample(), r.sample()
        assert set(first.batch) == {"pa"} and first.batch["pa"]["rewards"].shape == (2, 2)  # 2 envs: 2 columns of a
        assert set(second.batch) == {"pb"} and not second.batch["pb"]["values"].any()  # pb's zeroed critic
        assert first.weights_version == 3
    finally:
        r.stop()


def test_policy_mapping_takes_the_first_matching_pattern():
    mapping = PolicyMapping({"player_1": "first", "agent_*": "shared"}, default="rest")
    assert [mapping(a) for a in ("player_1", "agent_0", "agent_12", "player_2")] == ["first", "shared", "shared", "rest"]


def test_a_turn_based_game_runs_through_the_parallel_api():
    require_extra("pettingzoo", "pettingzoo.classic")
    env = MultiAgentCreator("pettingzoo:pettingzoo.classic.tictactoe_v3")()
    assert isinstance(env, TurnBased)
    obs, _ = env.reset(seed=0)
    assert list(obs) == ["player_1"]
    moves = {"player_1": [0, 1, 2], "player_2": [3, 4]}  # player_1 takes the top row
    rewards_seen, turns = {}, []
    while True:
        (agent,) = [a for a in obs]
        turns.append(agent)
        obs, rewards, term, trunc, _ = env.step({agent: moves[agent].pop(0)})
        for a, x in rewards.items():
            rewards_seen[a] = rewards_seen.get(a, 0.0) + x
        if any(term.values()):
            break
    assert turns == ["player_1", "player_2"] * 2 + ["player_1"]
    assert term == {"player_1": True, "player_2": True} and set(obs) == {"player_1", "player_2"}  # both last obs
    assert rewards_seen == {"player_1": 1.0, "player_2": -1.0}


def test_an_unknown_module_is_one_error_naming_the_extra():
    with pytest.raises(MultiAgentEnvError, match="cannot import 'no_such_module_xyz'.*rlfleet\\[pettingzoo\\]"):
        MultiAgentCreator("pettingzoo:no_such_module_xyz")



def parallel_env():
    return Scripted()


SCRIPTED = "pettingzoo:tests.rl.test_multi_agent_runner"


def test_ppo_trains_separate_policies_and_leaves_a_frozen_one_as_it_was(tmp_path):
    from rlfleet.algorithms.ppo import PPOConfig

    config = PPOConfig.from_dict({
        "env": SCRIPTED, "policy_mapping": {"a": "pa", "b": "pb"}, "policies_to_train": ["pa"],
        "num_envs_per_runner": 2, "rollout_fragment_length": 4, "minibatch_size": 8, "hidden_sizes": [8],
        "logdir": str(tmp_path / "run"), "log_to_console": False}, source="test")
    algo = config.build()
    try:
        before = {pid: {k: v.copy() for k, v in w.items()} for pid, w in algo.learner_group.get_weights().items()}
        results = [algo.train() for _ in range(4)]  # a fills a column of 4 steps every other iteration
        result, after = results[-1], algo.learner_group.get_weights()
        assert any(not np.array_equal(before["pa"][k], after["pa"][k]) for k in after["pa"])
        assert all(np.array_equal(before["pb"][k], after["pb"][k]) for k in after["pb"])  # frozen
        assert ["policies/pa/losses/policy_loss" in r for r in results] == [False, True, False, True]
        assert not any(k.startswith("policies/pb/") for r in results for k in r)
        assert result["agents/a/episode_return_mean"] == 7.0 and result["agents/b/episode_return_mean"] == 6.0
        assert result["episode_return_mean"] == 13.0
        algo.save(str(tmp_path / "ckpt"))
    finally:
        algo.stop()
    restored = PPOConfig.from_dict({**config.to_dict(), "logdir": None}, source="test").build()
    try:
        restored.restore(str(tmp_path / "ckpt"))
        weights = restored.learner_group.get_weights()
        assert all(np.array_equal(weights[pid][k], after[pid][k]) for pid in after for k in after[pid])
    finally:
        restored.stop()


def test_agents_with_different_spaces_cannot_share_a_policy():
    from rlfleet.algorithms.ppo import PPOConfig
    from rlfleet.rl.config import ConfigError

    require_extra("mpe2", "mpe2")
    with pytest.raises(ConfigError, match="share policy 'default' but not their spaces"):
        PPOConfig.from_dict({"env": "pettingzoo:mpe2.simple_adversary_v3", "log_to_console": False},
                            source="test").build()
    with pytest.raises(ConfigError, match="policies_to_train names 'nobody'"):
        PPOConfig.from_dict({"env": SCRIPTED, "policies_to_train": ["nobody"], "log_to_console": False},
                            source="test").build()


def test_impala_trains_each_policy_from_its_own_queue(tmp_path):
    from rlfleet.algorithms.impala import IMPALAConfig

    config = IMPALAConfig.from_dict({
        "env": SCRIPTED, "policy_mapping": {"a": "pa", "b": "pb"}, "num_envs_per_runner": 2,
        "rollout_fragment_length": 4, "train_batch_fragments": 1, "hidden_sizes": [8], "log_to_console": False},
        source="test")
    algo = config.build()
    try:
        before = {pid: {k: v.copy() for k, v in w.items()} for pid, w in algo.learner_group.get_weights().items()}
        results = [algo.train() for _ in range(4)]
        after = algo.learner_group.get_weights()
        for pid in ("pa", "pb"):
            assert any(not np.array_equal(before[pid][k], after[pid][k]) for k in after[pid]), pid
            assert any(f"policies/{pid}/losses/policy_loss" in r for r in results)
        assert results[-1]["agents/b/episode_return_mean"] == 6.0
    finally:
        algo.stop()


@pytest.mark.parametrize("algo_name", ["ppo", "impala"])
def test_two_learners_per_policy_train_when_a_shard_holds_none_of_a_policy(shared_ray, algo_name):
    """One env and one column per policy batch: with two learners, IMPALA's rank 0 gets no
    column of it (its shard is empty) and PPO gets policies in alternate iterations only."""
    from rlfleet.algorithms import get_config_class

    config = get_config_class(algo_name).from_dict({
        "env": SCRIPTED, "policy_mapping": {"a": "pa", "b": "pb"}, "num_envs_per_runner": 1,
        "rollout_fragment_length": 4, "hidden_sizes": [8], "num_learners": 2, "log_to_console": False,
        **({"minibatch_size": 4} if algo_name == "ppo" else {"train_batch_fragments": 1})}, source="test")
    algo = config.build()
    try:
        before = {pid: {k: v.copy() for k, v in w.items()} for pid, w in algo.learner_group.get_weights().items()}
        for _ in range(4):
            algo.train()  # a hang here is the failure
        after = algo.learner_group.get_weights()
        assert all(any(not np.array_equal(before[p][k], after[p][k]) for k in after[p]) for p in ("pa", "pb"))
    finally:
        algo.stop()


def test_a_multi_agent_checkpoint_is_served_and_exported_by_policy_id(tmp_path):
    import subprocess
    import sys

    require_extra("export", "onnx")  # the export extra

    from rlfleet.algorithms.ppo import PPOConfig
    from rlfleet.rl.checkpoint import CheckpointError
    from rlfleet.rl.inference import Policy
    from rlfleet.scripts.tools.serving import PolicyService
    from rlfleet.runtime.base import BadRequest

    algo = PPOConfig.from_dict({"env": SCRIPTED, "policy_mapping": {"a": "pa", "b": "pb"}, "num_envs_per_runner": 2,
                                "rollout_fragment_length": 4, "minibatch_size": 8, "hidden_sizes": [8],
                                "log_to_console": False}, source="test").build()
    try:
        algo.train()
        algo.save(str(tmp_path / "ckpt"))
        weights = algo.learner_group.get_weights()
    finally:
        algo.stop()
    with pytest.raises(CheckpointError, match="multi-agent with policies pa, pb: no policy id given"):
        Policy.load(str(tmp_path / "ckpt"))
    with pytest.raises(CheckpointError, match=r"policy id 'pc' given \(--policy-id\); did you mean"):
        Policy.load(str(tmp_path / "ckpt"), policy_id="pc")
    policy = Policy.load(str(tmp_path / "ckpt"), policy_id="pb")
    assert policy.metadata()["policy_id"] == "pb"
    obs = np.array([[1.0], [3.0]], np.float32)
    with torch.no_grad():
        module = ModuleSpec(OBS, ACT, hidden_sizes=(8,)).build()
        module.load_state_dict({k: torch.from_numpy(v) for k, v in weights["pb"].items()})
        expected = module.forward_inference(torch.from_numpy(obs))[0].tolist()
    service = PolicyService(str(tmp_path / "ckpt"), policy_id="pb")
    request, rows = service.parse("/act", {"obs": [[1.0], [3.0]]})
    assert service.run("/act", [(request, rows)])[0]["actions"] == expected
    with pytest.raises(BadRequest, match="policy_id 'pa': this server serves policy 'pb' only"):
        service.parse("/act", {"obs": [1.0], "policy_id": "pa"})

    # served whole: each request names its policy; one batch holds requests of both
    service = PolicyService(str(tmp_path / "ckpt"))
    meta = service.metadata()
    assert sorted(meta["policies"]) == ["pa", "pb"] and meta["policy_mapping"] == {"a": "pa", "b": "pb"}
    assert meta["policies"]["pa"]["action_space"] == {"type": "discrete", "n": 2, "start": 0}
    with pytest.raises(BadRequest, match="this checkpoint is multi-agent: name the policy that acts, "
                                         "\"policy_id\": one of pa, pb"):
        service.parse("/act", {"obs": [1.0]})
    with pytest.raises(BadRequest, match=r"unknown policy_id 'pc'; did you mean 'pb'\? \(policies: pa, pb\)"):
        service.parse("/act", {"obs": [1.0], "policy_id": "pc"})
    expected_a = []
    for x in (1.0, 3.0):
        module.load_state_dict({k: torch.from_numpy(v) for k, v in weights["pa"].items()})
        with torch.no_grad():
            expected_a.append(module.forward_inference(torch.tensor([[x]]))[0].item())
    items = [service.parse("/act", {"obs": [x], "policy_id": pid}) for pid in ("pa", "pb") for x in (1.0, 3.0)]
    assert [r["actions"] for r in service.run("/act", items)] == expected_a + expected
    out = subprocess.run([sys.executable, "-m", "rlfleet.scripts.export", "--checkpoint", str(tmp_path / "ckpt"),
                          "--policy-id", "pa"], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    assert (tmp_path / "policy-pa.onnx").exists()  # beside the checkpoint directory (a save replaces it whole)


def test_dqn_refuses_a_multi_agent_env_in_one_line():
    from rlfleet.algorithms.dqn import DQNConfig
    from rlfleet.rl.config import ConfigError

    with pytest.raises(ConfigError, match="dqn does not train multi-agent envs yet .*; use ppo or impala"):
        DQNConfig.from_dict({"env": SCRIPTED}, source="test")


def test_evaluation_plays_a_separate_policy_against_random_opponents():
    from rlfleet.algorithms.ppo import PPOConfig

    algo = PPOConfig.from_dict({"env": SCRIPTED, "policy_mapping": {"a": "pa", "b": "pb"},
                                "evaluation_policy_mapping": {"b": "random"}, "evaluation_num_episodes": 3,
                                "num_envs_per_runner": 1, "rollout_fragment_length": 4, "minibatch_size": 4,
                                "hidden_sizes": [8], "log_to_console": False}, source="test").build()
    try:
        metrics = algo.evaluate()
    finally:
        algo.stop()
    # the scripted env pays the same whoever acts: a 7 (1 + 1 + 5), b 6; a's return beats b's in every episode
    assert metrics["evaluation/agents/a/episode_return_mean"] == 7.0 and metrics["evaluation/agents/a/win_rate"] == 1.0
    assert metrics["evaluation/agents/b/win_rate"] == 0.0 and metrics["evaluation/num_episodes"] == 3
    assert metrics["evaluation/illegal_actions"] == 0


def test_a_registered_multi_agent_env_trains_by_name():
    from rlfleet.algorithms.ppo import PPOConfig
    from rlfleet.envs.multi_agent import register_multi_agent_env

    register_multi_agent_env("test/scripted-duo", Scripted)
    algo = PPOConfig.from_dict({"env": "test/scripted-duo", "num_envs_per_runner": 1, "rollout_fragment_length": 4,
                                "minibatch_size": 4, "hidden_sizes": [8], "log_to_console": False},
                               source="test").build()
    try:
        results = [algo.train() for _ in range(2)]
        assert results[-1]["agents/b/episode_return_mean"] == 6.0 and set(algo.module_spec) == {"default"}
    finally:
        algo.stop()


def test_a_snapshot_opponent_copies_the_learning_policy_every_interval_and_never_learns():
    from rlfleet.algorithms.ppo import PPOConfig

    algo = PPOConfig.from_dict({
        "env": SCRIPTED, "policy_mapping": {"a": "main", "b": "past"}, "policy_snapshots": {"past": "main"},
        "snapshot_interval": 3, "num_envs_per_runner": 2, "rollout_fragment_length": 2, "minibatch_size": 4,
        "hidden_sizes": [8], "log_to_console": False}, source="test").build()

    def weights():
        return {pid: {k: v.copy() for k, v in w.items()} for pid, w in algo.learner_group.get_weights().items()}

    def same(x, y):
        return all(np.array_equal(x[k], y[k]) for k in x)

    try:
        assert algo.learner_group.trainable == ["main"]
        start = weights()
        assert same(start["past"], start["main"])  # the opponent starts as the policy's own first self
        history = []
        for _ in range(6):
            result = algo.train()
            history.append(weights())
            assert not any(k.startswith("policies/past/") for k in result)
        assert not same(history[0]["main"], start["main"]) and same(history[2]["past"], start["past"])
        # copied after iteration 3 (as iteration 4 starts), kept through iteration 6
        assert all(same(history[k]["past"], history[2]["main"]) for k in (3, 4, 5))
        assert not same(history[5]["main"], history[2]["main"])  # main learned on; its copy did not
        runner = algo.env_runner_group.group.actors[0]  # the acting copy got the snapshot with the broadcast
        acting = {k: v.numpy() for k, v in runner.modules["past"].state_dict().items()}
        assert same(acting, history[2]["main"])
        algo.train()  # iteration 7 starts with the copy of iteration 6
        assert same(weights()["past"], history[5]["main"])
    finally:
        algo.stop()


@pytest.mark.parametrize("snapshots, message", [
    ({"past": "mian"}, "policy_snapshots: source 'mian' is no policy an agent maps to; did you mean 'main'?"),
    ({"main": "main"}, "policy_snapshots: 'main' cannot be a snapshot of itself"),
])
def test_bad_policy_snapshots_are_one_error(snapshots, message):
    from rlfleet.algorithms.ppo import PPOConfig
    from rlfleet.rl.config import ConfigError

    with pytest.raises(ConfigError, match=re.escape(message)):
        PPOConfig.from_dict({"env": SCRIPTED, "policy_mapping": {"a": "main", "b": "past"},
                             "policy_snapshots": snapshots, "log_to_console": False}, source="test").build()
    with pytest.raises(ConfigError, match="policy_snapshots: 'past' is in policies_to_train"):
        PPOConfig.from_dict({"env": SCRIPTED, "policy_mapping": {"a": "main", "b": "past"},
                             "policy_snapshots": {"past": "main"}, "policies_to_train": ["main", "past"],
                             "log_to_console": False}, source="test").build()
    with pytest.raises(ConfigError, match="policy_snapshots is for multi-agent envs; 'CartPole-v1' has one agent"):
        PPOConfig.from_dict({"env": "CartPole-v1", "policy_snapshots": {"past": "main"}, "log_to_console": False},
                            source="test").build()


@pytest.mark.parametrize("config, message", [
    # issue 30: a KeyError in the first evaluation, after an iteration had trained
    ({"policy_mapping": {"a": "main", "b": "other"}, "evaluation_policy_mapping": {"b": "rnadom"}},
     "evaluation_policy_mapping maps 'b' to 'rnadom', which is no policy; did you mean 'random'?"),
    # issue 30: StopIteration while the factory looked for a policy to pick defaults from
    ({"policy_mapping": {"*": "random"}},
     "policy_mapping {'*': 'random'} maps every agent of 'pettingzoo:tests.rl.test_multi_agent_runner' to 'random': "
     "no policy is left to train"),
    ({"policy_mapping": {"agent_b": "main"}}, "policy_mapping: 'agent_b' matches no agent of"),
    ({"evaluation_policy_mapping": {"c": "random"}}, "evaluation_policy_mapping: 'c' matches no agent of"),
    ({"policies_to_train": []}, "policies_to_train is empty: no policy would learn (policies: default)"),
])
def test_policy_mapping_mistakes_are_refused_at_build_time(config, message):
    from rlfleet.algorithms.ppo import PPOConfig
    from rlfleet.rl.config import ConfigError

    with pytest.raises(ConfigError, match=re.escape(message)):
        PPOConfig.from_dict({"env": SCRIPTED, "log_to_console": False, **config}, source="test").build()


def test_with_memory_each_agent_carries_its_own_state_from_zeros_at_its_first_step():
    spec = ModuleSpec(OBS, ACT, hidden_sizes=(8,), memory="gru", memory_size=4)
    r = MultiAgentEnvRunner(env_creator=Scripted, specs={"default": spec}, mapping=PolicyMapping(None), num_envs=1,
                            fragment_length=2, seed=0)
    module = r.modules["default"]

    def after(k, state):  # the state after acting on observation [k] from ``state``
        with torch.no_grad():
            return module.step_features(torch.tensor([[float(k)]]), torch.as_tensor(state)[None])[1][0].numpy()

    try:
        first = r.sample().batch["default"]  # a's steps at k=0 (its first) and k=1
        zero = np.zeros(4, np.float32)
        np.testing.assert_array_equal(first["state_in"][0, 0], zero)
        np.testing.assert_allclose(first["state_in"][1, 0], after(0, zero), atol=1e-6)
        second = r.sample().batch["default"]  # b joined at k=1: its own state from zeros
        np.testing.assert_array_equal(second["state_in"][0, 0], zero)
        b1 = after(1, zero)
        np.testing.assert_allclose(second["state_in"][1, 0], b1, atol=1e-6)
        assert np.abs(b1).max() > 1e-3
        r.sample()
        fourth = r.sample().batch["default"]
        # b's truncated k=3 step bootstraps from V(final obs [4]) read from the state after that step
        b3 = after(3, after(2, b1))
        with torch.no_grad():
            v_final = float(module.compute_values(torch.tensor([[4.0]]), torch.as_tensor(b3)[None]))
        assert fourth["truncated"][0, 0] and fourth["next_values"][0, 0] == pytest.approx(v_final, abs=1e-5)
        np.testing.assert_array_equal(fourth["state_in"][1, 0], zero)  # b's next episode starts afresh
    finally:
        r.stop()


@pytest.mark.parametrize("algo", ["ppo", "impala"])
def test_recurrent_policies_train_and_evaluate_on_a_multi_agent_env(algo):
    from rlfleet.algorithms import get_config_class

    extra = {"minibatch_size": 8} if algo == "ppo" else {"train_batch_fragments": 1}
    config = get_config_class(algo).from_dict({
        "env": SCRIPTED, "memory": "lstm", "memory_size": 8, "max_seq_len": 2, "num_envs_per_runner": 2,
        "rollout_fragment_length": 4, "hidden_sizes": [8], "log_to_console": False, **extra}, source="test")
    with config.build() as trained:
        before = {k: v.copy() for k, v in trained.learner_group.get_weights()["default"].items()}
        results = [trained.train() for _ in range(4)]
        after = trained.learner_group.get_weights()["default"]
        evaluation = trained.evaluate()
    assert any(not np.array_equal(before[k], after[k]) for k in after if k.startswith("core."))
    losses = [v for r in results for k, v in r.items() if k.endswith("losses/policy_loss")]
    assert losses and all(np.isfinite(losses))
    assert evaluation["evaluation/episode_return_mean"] == 13.0  # the scripted rewards, whatever the actions

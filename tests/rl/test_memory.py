"""Memory (issue 33): the recurrent cores against hand-computed gates, the numpy acting
forward against torch, the sequence forward against the step-by-step acting forward, the
runner's state at episode starts and fragment boundaries, chunks from stored states, and
PPO learning a task that an MLP cannot."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
import torch
import tree
from gymnasium import spaces

from rlfleet.algorithms.dqn import DQNConfig
from rlfleet.algorithms.impala import IMPALAConfig
from rlfleet.algorithms.ppo import PPOConfig
from rlfleet.envs.testing import CueEnv
from rlfleet.rl.batch import to_sequences
from rlfleet.rl.config import ConfigError
from rlfleet.rl.learner import numpy_weights
from rlfleet.rl.models.memory import MemoryCore
from rlfleet.rl.models.numpy_policy import NumpyPolicy
from rlfleet.rl.models.spec import ModuleSpec
from rlfleet.rl.runners.env_runner import EnvRunner

KINDS = ["gru", "lstm"]


def sigmoid(x: float) -> float:
    return 1.0 / (1.0 + math.exp(-x))


def one_unit_core(kind: str) -> MemoryCore:
    """One input, one unit; gate weights 0.1, 0.2, ... (input) and -0.3, -0.2, ... (state)."""
    core = MemoryCore(kind, 1, 1)
    gates = core.weight_ih.shape[0]
    with torch.no_grad():
        core.weight_ih.copy_(torch.tensor([[0.1 * (i + 1)] for i in range(gates)]))
        core.weight_hh.copy_(torch.tensor([[-0.3 + 0.1 * i] for i in range(gates)]))
        core.bias_ih.fill_(0.05)
        core.bias_hh.zero_()
    return core


def test_gru_step_equals_the_hand_computed_gates():
    x, h = 2.0, 0.5
    r = sigmoid(0.1 * x + 0.05 - 0.3 * h)
    z = sigmoid(0.2 * x + 0.05 - 0.2 * h)
    n = math.tanh(0.3 * x + 0.05 + r * (-0.1 * h))
    expected = (1 - z) * n + z * h
    out, state = one_unit_core("gru").forward_step(torch.tensor([[x]]), torch.tensor([[h]]))
    assert out.item() == pytest.approx(expected, abs=1e-6) and state.item() == pytest.approx(expected, abs=1e-6)


def test_lstm_step_equals_the_hand_computed_gates():
    x, h, c = 2.0, 0.5, -1.0
    i = sigmoid(0.1 * x + 0.05 - 0.3 * h)
    f = sigmoid(0.2 * x + 0.05 - 0.2 * h)
    g = math.tanh(0.3 * x + 0.05 - 0.1 * h)
    o = sigmoid(0.4 * x + 0.05 + 0.0 * h)
    c_next = f * c + i * g
    h_next = o * math.tanh(c_next)
    out, state = one_unit_core("lstm").forward_step(torch.tensor([[x]]), torch.tensor([[h, c]]))
    assert out.item() == pytest.approx(h_next, abs=1e-6)
    assert state[0].tolist() == pytest.approx([h_next, c_next], abs=1e-6)


def masked_space() -> spaces.Dict:
    return spaces.Dict({"action_mask": spaces.MultiBinary(4), "obs": spaces.Box(-1.0, 1.0, (3,), np.float32)})


SPACES = {
    "vector-discrete": lambda: (spaces.Box(-1.0, 1.0, (3,), np.float32), spaces.Discrete(4)),
    "masked": lambda: (masked_space(), spaces.Discrete(4)),
    "vector-box": lambda: (spaces.Box(-1.0, 1.0, (3,), np.float32), spaces.Box(-1.0, 1.0, (2,), np.float32)),
}


def sample_obs(space: spaces.Space, n: int, rng: np.random.Generator):
    if isinstance(space, spaces.Dict):
        mask = rng.integers(0, 2, (n, 4)).astype(np.int8)
        mask[:, 0] = 1  # at least one legal action
        return {"action_mask": mask, "obs": rng.standard_normal((n, 3)).astype(np.float32)}
    return rng.standard_normal((n, *space.shape)).astype(np.float32)


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("case", sorted(SPACES))
def test_numpy_acting_forward_equals_the_torch_module(kind, case):
    obs_space, act_space = SPACES[case]()
    spec = ModuleSpec(obs_space, act_space, hidden_sizes=(16, 16), memory=kind, memory_size=8)
    torch.manual_seed(0)
    module = spec.build()
    policy = NumpyPolicy(spec, seed=1)
    policy.load(numpy_weights(module))
    rng = np.random.default_rng(0)
    obs = sample_obs(obs_space, 5, rng)
    state = rng.standard_normal((5, policy.state_size)).astype(np.float32)
    t_obs = tree.map_structure(torch.from_numpy, obs)
    out = policy.explore(obs, state)
    with torch.no_grad():
        feats, t_state = module.step_features(t_obs, torch.from_numpy(state))
        dist = module.dist(module.dist_inputs(feats), t_obs)
        logp = dist.logp([torch.as_tensor(a) for a in out["actions"]])
        values = module.values(feats)
    np.testing.assert_allclose(out["state"], t_state.numpy(), atol=1e-5)
    np.testing.assert_allclose(out["values"], values.numpy(), atol=1e-5)
    np.testing.assert_allclose(out["logp"], logp.numpy(), atol=1e-5)
    greedy, next_state = policy.greedy(obs, state)
    t_greedy, t_next = module.forward_inference(t_obs, torch.from_numpy(state))
    np.testing.assert_allclose(next_state, t_next.numpy(), atol=1e-5)
    for a, b in zip(greedy, t_greedy):
        np.testing.assert_allclose(a, b.numpy(), atol=1e-5)


@pytest.mark.parametrize("kind", KINDS)
def test_the_sequence_forward_equals_the_step_by_step_acting_forward(kind):
    obs_space, act_space = SPACES["masked"]()
    torch.manual_seed(0)
    module = ModuleSpec(obs_space, act_space, hidden_sizes=(16,), memory=kind, memory_size=8).build()
    rng = np.random.default_rng(1)
    N, L = 3, 6
    obs = tree.map_structure(lambda x: torch.from_numpy(x.reshape(N, L, *x.shape[1:])), sample_obs(obs_space, N * L, rng))
    is_first = torch.zeros(N, L, dtype=torch.bool)
    is_first[0, [0, 2]] = True  # episodes start at the chunk's start and inside it
    is_first[1, 3] = True  # a chunk that starts mid-episode, from a stored state
    state0 = torch.from_numpy(rng.standard_normal((N, module.state_size)).astype(np.float32))
    state0[0] = 0.0  # (stored zero: an episode starts there)
    actions = [torch.from_numpy(rng.integers(0, 4, (N, L)))]
    with torch.no_grad():
        dist, values = module.forward_train(obs, state0, is_first)
        logp = dist.logp([actions[0].reshape(-1)]).reshape(N, L)
        state = state0
        for t in range(L):
            state = state * (~is_first[:, t]).float()[:, None]
            step_obs = tree.map_structure(lambda x: x[:, t], obs)
            feats, state = module.step_features(step_obs, state)
            step_dist = module.dist(module.dist_inputs(feats), step_obs)
            torch.testing.assert_close(logp[:, t], step_dist.logp([actions[0][:, t]]), atol=1e-6, rtol=0)
            torch.testing.assert_close(values.reshape(N, L)[:, t], module.values(feats), atol=1e-6, rtol=0)


def test_the_runner_zeroes_the_state_at_episode_starts_and_carries_it_across_fragments():
    # CueEnv(delay=2) episodes last 3 steps: with fragments of 4, episodes start at steps 0,
    # 3 (inside fragment 1) and 6 (inside fragment 2); step 4 continues across the boundary.
    spec = ModuleSpec(CueEnv(2).observation_space, CueEnv(2).action_space, hidden_sizes=(8,), memory="gru",
                      memory_size=4)
    runner = EnvRunner(env_creator=lambda: CueEnv(delay=2), env_name="cue", module_spec=spec, num_envs=2,
                       fragment_length=4, seed=0)
    first, second = runner.sample().batch, runner.sample().batch
    assert first["is_first"][:, 0].tolist() == [True, False, False, True]
    assert second["is_first"][:, 0].tolist() == [False, False, True, False]

    def stepped(obs, state):  # the state after acting on ``obs`` from ``state``
        return runner.policy.explore(obs, state.copy())["state"]

    for batch in (first, second):
        state_in = batch["state_in"]  # (T, B, S)
        assert state_in.shape == (4, 2, 4)
        assert np.all(state_in[batch["is_first"]] == 0.0)
        for t in range(1, 4):
            for b in range(2):
                if not batch["is_first"][t, b]:
                    expected = stepped(batch["obs"][t - 1, b : b + 1], state_in[t - 1, b : b + 1])[0]
                    np.testing.assert_allclose(state_in[t, b], expected, atol=1e-6)
                    assert np.abs(expected).max() > 1e-3  # a real state, not zeros
    # across the boundary: fragment 2 starts from the state fragment 1 ended with
    carried = stepped(first["obs"][-1], first["state_in"][-1])
    np.testing.assert_allclose(second["state_in"][0], carried, atol=1e-6)


def test_chunks_start_from_the_stored_state_with_burn_in_and_padding():
    # T = 5 steps of B = 2 envs, chunks of L = 2 with 1 step of burn-in: W = 3.
    T, B = 5, 2
    steps = np.arange(T)[:, None] * 10 + np.arange(B)[None, :]  # value 10 t + b
    batch = {"obs": steps.astype(np.float32), "actions": [steps.copy()], "is_first": np.zeros((T, B), bool),
             "state_in": np.stack([steps, -steps], -1).astype(np.float32)}  # (T, B, 2)
    batch["is_first"][3, 1] = True
    seq = to_sequences(batch, max_seq_len=2, burn_in=1)
    # chunk 0: steps 0, 1 (+ step 2 as padding); chunk 1: 1 (burn-in), 2, 3; chunk 2: 3 (burn-in), 4, pad
    assert seq["obs"][:, :, ].tolist() == [[0, 10, 20], [1, 11, 21], [10, 20, 30], [11, 21, 31],
                                          [30, 40, 40], [31, 41, 41]]
    assert seq["actions"][0].tolist() == seq["obs"].tolist()
    assert seq["loss_mask"].tolist() == [[1, 1, 0], [1, 1, 0], [0, 1, 1], [0, 1, 1], [0, 1, 0], [0, 1, 0]]
    # each sequence starts from the state stored at its first step (mid-episode: not zeros)
    assert seq["state_in"].tolist() == [[0, 0], [1, -1], [10, -10], [11, -11], [30, -30], [31, -31]]
    assert seq["is_first"][5].tolist() == [True, False, False]


def test_ppo_recomputes_the_acting_log_probs_and_values_on_its_sequences():
    config = PPOConfig(env=CueEnv, memory="lstm", memory_size=16, max_seq_len=4, burn_in=1, num_envs_per_runner=3,
                       rollout_fragment_length=10, minibatch_size=8, hidden_sizes=(16,), seed=3)
    algo = config.build()
    try:
        algo.train()  # the runner's weights are now the learner's after one update
        fragments = algo.sample()
        batch = algo.rows([f.batch for f in fragments])
        module = algo.module_spec.build()
        module.load_state_dict({k: torch.from_numpy(v) for k, v in algo.learner_group.get_weights().items()})
    finally:
        algo.stop()
    n, w = batch["loss_mask"].shape
    assert (n, w) == (3 * 3, 5)  # chunks at 0, 4, 8 of 3 envs; 1 + 4 steps each
    with torch.no_grad():
        dist, values = module.forward_train(tree.map_structure(torch.from_numpy, batch["obs"]),
                                            torch.from_numpy(batch["state_in"]), torch.from_numpy(batch["is_first"]))
        logp = dist.logp([torch.from_numpy(batch["actions"][0].reshape(-1))])
    used = batch["loss_mask"].reshape(-1) > 0
    assert used.sum() == 30  # every step of the fragments once
    np.testing.assert_allclose(logp.numpy()[used], batch["logp"].reshape(-1)[used], atol=1e-5)
    np.testing.assert_allclose(values.numpy()[used], batch["values"].reshape(-1)[used], atol=1e-5)


def test_memory_is_refused_where_it_is_not_built_and_checked_where_it_is():
    from rlfleet.algorithms.sac import SACConfig

    with pytest.raises(ConfigError, match="memory is not built for sac yet; use ppo, impala or dqn"):
        SACConfig(memory="gru")
    with pytest.raises(ConfigError, match="prioritized_replay is not built for replay with memory yet"):
        DQNConfig(memory="gru", prioritized_replay=True)
    with pytest.raises(ConfigError, match="burn_in 2: impala runs each fragment through the core whole"):
        IMPALAConfig(memory="lstm", burn_in=2)
    with pytest.raises(ConfigError, match=r"memory must be 'gru', 'lstm' or null; got 'lstn'; did you mean 'lstm'"):
        PPOConfig(memory="lstn")
    with pytest.raises(ConfigError, match=r"burn_in must be in \[0, max_seq_len 8\), got 8"):
        PPOConfig(memory="gru", max_seq_len=8, burn_in=8)
    with pytest.raises(ConfigError, match="holds 3 sequences of max_seq_len 16, which must divide by num_learners 2"):
        PPOConfig(memory="gru", max_seq_len=16, minibatch_size=48, num_learners=2)


@pytest.mark.learning
def test_ppo_with_memory_solves_a_cue_task_that_an_mlp_cannot():
    # The cue is shown only at the first of 5 steps; the answer at the last is worth +-1.
    # Without memory the best is a guess (expected 0); a GRU remembers (1).
    def final_return(memory):
        config = PPOConfig(env=CueEnv, memory=memory, memory_size=32, max_seq_len=8, num_envs_per_runner=8,
                           rollout_fragment_length=40, minibatch_size=64, hidden_sizes=(32,), seed=0,
                           metrics_smoothing_episodes=100)
        with config.build() as algo:
            while algo.env_steps < 30_000:
                result = algo.train()
        return result["episode_return_mean"]

    assert final_return("gru") >= 0.9
    assert final_return(None) <= 0.3


def short_memory_run(tmp_path, steps: int) -> str:
    """A GRU policy trained ``steps`` env steps on the cue task; its checkpoint's path."""
    config = PPOConfig(env="rlfleet/Cue-v0", memory="gru", memory_size=32, max_seq_len=8, num_envs_per_runner=8,
                       rollout_fragment_length=40, minibatch_size=64, hidden_sizes=(32,), seed=0,
                       metrics_smoothing_episodes=100)
    with config.build() as algo:
        while algo.env_steps < steps:
            algo.train()
        return algo.save(str(tmp_path / "checkpoint"))


def evaluate(checkpoint: str, capsys) -> dict:
    from rlfleet.scripts.evaluate import main

    assert main(["--checkpoint", checkpoint, "--episodes", "20", "--json"]) == 0
    return json.loads(capsys.readouterr().out.strip().splitlines()[-1])


def test_a_memory_checkpoint_evaluates_and_acts_through_the_python_api(tmp_path, capsys):
    checkpoint = short_memory_run(tmp_path, 320)
    summary = evaluate(checkpoint, capsys)
    assert summary["episodes"] == 20 and summary["requests"] == 20 * 5  # 5 steps a cue episode
    assert set(summary["returns"]) <= {-1.0, 1.0}
    from rlfleet.rl.inference import Policy

    policy = Policy.load(checkpoint)
    # the Python API acts from a state and returns the next one
    obs = np.array([[1.0, 0.0, 0.0]], np.float32)
    first = policy.act(obs)
    assert first["state"].shape == (1, 32) and np.abs(first["state"]).max() > 0
    again = policy.act(obs, state=first["state"])
    assert not np.allclose(again["state"], first["state"])


@pytest.mark.learning
def test_evaluate_py_carries_a_trained_policys_state_through_each_episode(tmp_path, capsys):
    # Trained to 1.0 on the cue task (test above): evaluate.py's episodes, acting one
    # observation at a time from the state it carries, answer every cue.
    summary = evaluate(short_memory_run(tmp_path, 30_000), capsys)
    assert summary["return_mean"] == 1.0, summary


def test_impala_recomputes_the_runners_log_probs_and_next_values_through_chunked_fragments():
    # Corridor episodes are cut by a 6-step time limit (truncations bootstrap from the final
    # observation with the state after the last step); fragments of 10 steps restart from
    # their stored state at steps 0, 4 and 8 (max_seq_len 4).
    from rlfleet.algorithms.impala.algorithm import learner_batch
    from rlfleet.algorithms.impala.learner import IMPALALearner
    from rlfleet.envs.testing import CorridorEnv

    config = IMPALAConfig(env=CorridorEnv, env_config={"length": 100, "max_steps": 6}, memory="lstm", memory_size=8,
                          max_seq_len=4, num_envs_per_runner=3, rollout_fragment_length=10, hidden_sizes=(16,),
                          train_batch_fragments=1, seed=2)
    algo = config.build()
    try:
        fragments = algo.sample()
        weights = algo.learner_group.get_weights()
        learner = IMPALALearner(module_spec=algo.module_spec, config=algo.config)
    finally:
        algo.stop()
    learner.set_weights(weights)
    batch = learner.to_tensors(learner_batch(fragments))
    assert batch["final_tb"].shape[0] == 3 and batch["state_in"].shape == (10, 3, 16)
    with torch.no_grad():
        target_logp, values, _, next_values = learner.forward(batch)
    fragment = fragments[0].batch
    np.testing.assert_allclose(target_logp.numpy(), fragment["logp"], atol=1e-5)
    np.testing.assert_allclose(values.numpy(), fragment["values"], atol=1e-5)
    np.testing.assert_allclose(next_values.numpy(), fragment["next_values"], atol=1e-5)


@pytest.mark.learning
def test_impala_with_memory_solves_the_cue_task():
    config = IMPALAConfig(env=CueEnv, memory="gru", memory_size=32, max_seq_len=10, num_envs_per_runner=8,
                          rollout_fragment_length=20, hidden_sizes=(32,), seed=0, lr=1e-3,
                          metrics_smoothing_episodes=100)
    with config.build() as algo:
        while algo.env_steps < 60_000:
            result = algo.train()
    assert result["episode_return_mean"] >= 0.9, result["episode_return_mean"]


def test_n_step_sequence_targets_equal_the_hand_computed_returns():
    from rlfleet.algorithms.dqn.learner import sequence_targets

    # gamma 0.5, 2-step: a termination at step 2, a truncation at step 5, padding at step 7
    rewards = torch.tensor([[1.0, 2.0, 3.0, 4.0, 5.0, 6.0, 7.0, 0.0]])
    terminated = torch.tensor([[0, 0, 1, 0, 0, 0, 0, 0]], dtype=torch.bool)
    truncated = torch.tensor([[0, 0, 0, 0, 0, 1, 0, 0]], dtype=torch.bool)
    valid = torch.tensor([[1, 1, 1, 1, 1, 1, 1, 0]], dtype=torch.bool)
    next_q = torch.tensor([[10.0, 20.0, 30.0, 40.0, 50.0, 60.0, 70.0, 80.0]])
    got = sequence_targets(rewards, terminated, truncated, valid, next_q, gamma=0.5, n_step=2)
    expected = [
        1 + 0.5 * 2 + 0.25 * 20,  # two rewards, then Q of step 1's next observation
        2 + 0.5 * 3,  # the episode terminates at step 2: no bootstrap
        3,  # the terminal step itself
        4 + 0.5 * 5 + 0.25 * 50,
        5 + 0.5 * 6 + 0.25 * 60,  # truncated at 5: bootstrap from its final observation's Q
        6 + 0.5 * 60,
        7 + 0.5 * 70,  # the last valid step: one reward, then its own next observation
        0.0,  # padding
    ]
    assert got[0].tolist() == pytest.approx(expected)


def test_the_sequence_replay_keeps_each_steps_next_observation_and_its_stored_state():
    from rlfleet.rl.core import Fragment
    from rlfleet.rl.replay.sequences import SequenceReplay, next_observations

    T, B = 4, 2
    obs = np.arange(T * B, dtype=np.float32).reshape(T, B, 1)  # value 2 t + b
    batch = {"obs": obs, "actions": [np.zeros((T, B), np.int64)], "rewards": np.ones((T, B), np.float32),
             "terminated": np.zeros((T, B), bool), "truncated": np.zeros((T, B), bool),
             "is_first": np.zeros((T, B), bool), "bootstrap_obs": np.full((1, B, 1), 99.0, np.float32),
             "state_in": np.repeat(obs, 3, -1)}
    batch["truncated"][1, 0] = True
    fragment = Fragment(batch, [], [], T * B, 0, final_obs=[(1, 0, np.array([-5.0], np.float32))])
    nxt = next_observations(fragment)
    assert nxt[:, 0, 0].tolist() == [2.0, -5.0, 6.0, 99.0] and nxt[:, 1, 0].tolist() == [3.0, 5.0, 7.0, 99.0]
    replay = SequenceReplay(6, max_seq_len=2, burn_in=1, lookahead=1, seed=0)  # 3 sequences of 2 + 1 + 1 steps
    replay.add(fragment)
    assert len(replay) == 6 and replay.capacity == 3
    # chunks (0, 1) and (2, 3) of 2 envs: 4 sequences, the ring keeps the newest 3
    assert sorted(replay.data["state_in"][:, 0].tolist()) == [1.0, 2.0, 3.0]
    sample = replay.sample(4)
    assert len(sample["indices"]) == 2 and sample["obs"].shape == (2, 4, 1)
    restored = SequenceReplay(6, max_seq_len=2, burn_in=1, lookahead=1, seed=5)
    restored.set_state(replay.get_state())
    np.testing.assert_equal(restored.sample(4), replay.sample(4))
    with pytest.raises(ValueError, match="its replay holds 3 sequences, this run's holds 2"):
        SequenceReplay(4, max_seq_len=2, burn_in=1, lookahead=1, seed=0).set_state(replay.get_state())


def r2d2_config(**kw):
    return DQNConfig(**{**dict(env=CueEnv, memory="gru", memory_size=32, max_seq_len=8, burn_in=2, n_step=3,
                               num_envs_per_runner=8, rollout_fragment_length=16, minibatch_size=256, hidden_sizes=(32,),
                               lr=1e-3, learning_starts=1000, epsilon_timesteps=5000, target_update_interval=100,
                               buffer_size=20000, replay_ratio=0.25, metrics_smoothing_episodes=100, seed=0), **kw})


def test_r2d2_unrolls_from_stored_states_to_the_states_the_runner_acted_from():
    algo = r2d2_config(learning_starts=0).build()
    try:
        algo.train()
        fragment = algo.sample()[0]
        module = algo.module_spec.build()
        module.load_state_dict({k: torch.from_numpy(v) for k, v in algo.learner_group.get_weights().items()})
        sequences = algo.buffer.data
    finally:
        algo.stop()
    batch = fragment.batch
    with torch.no_grad():
        _, states = module.sequence_q(torch.from_numpy(batch["obs"]).transpose(0, 1),
                                      torch.from_numpy(batch["state_in"][0]),
                                      torch.from_numpy(batch["is_first"]).transpose(0, 1))
    after = states.transpose(0, 1).numpy()  # (T, B, S): the state after each step
    carried = ~batch["is_first"][1:]
    np.testing.assert_allclose(after[:-1][carried], batch["state_in"][1:][carried], atol=1e-5)
    assert sequences["valid"].shape[1] == 2 + 8 + 2  # burn-in, the chunk, n_step - 1 of lookahead


def test_an_r2d2_run_resumes_exactly_with_its_sequence_replay(tmp_path):
    timing = {"time_s", "env_steps_per_s", "runner_busy_fraction", "weight_sync_s"}
    strip = lambda row: {k: v for k, v in row.items() if k not in timing and not k.startswith("startup/")}  # noqa: E731
    # a deterministic env, one episode per iteration (16 steps, 1 env), so a restored run's
    # fresh episodes are the ones it would have had
    from rlfleet.envs.testing import CorridorEnv

    config = r2d2_config(env=CorridorEnv, env_config={"length": 100, "max_steps": 16}, num_envs_per_runner=1,
                         learning_starts=32, minibatch_size=32, checkpoint_replay=True, buffer_size=400)
    a = config.build()
    try:
        for _ in range(3):
            a.train()
        a.save(str(tmp_path))
        straight = [strip(a.train()) for _ in range(5)]
    finally:
        a.stop()
    b = config.build()
    try:
        b.restore(str(tmp_path))
        resumed = [strip(b.train()) for _ in range(5)]
    finally:
        b.stop()
    assert straight[-1]["learner/num_grad_steps"] > 0
    np.testing.assert_equal(resumed, straight)


def test_r2d2_learns_with_one_step_targets_too():
    # n_step 1: no lookahead past the chunk; every step still knows whether it is real
    with r2d2_config(n_step=1, learning_starts=0, minibatch_size=64).build() as algo:
        result = algo.train()
        assert algo.buffer.data["valid"].shape[1] == 2 + 8
    assert result["learner/num_grad_steps"] > 0 and np.isfinite(result["losses/td_loss"])


@pytest.mark.learning
def test_r2d2_solves_the_cue_task():
    with r2d2_config().build() as algo:
        while algo.env_steps < 10_000:
            result = algo.train()
    assert result["episode_return_mean"] >= 0.85, result["episode_return_mean"]  # epsilon 0.05 still explores


@pytest.mark.parametrize("kind", KINDS)
def test_no_gradient_flows_back_past_the_end_of_a_burn_in(kind):
    from rlfleet.rl.batch import burn_in_end

    core = MemoryCore(kind, 3, 4)
    x = torch.randn(2, 5, 3, requires_grad=True)
    loss_mask = torch.tensor([[0, 0, 1, 1, 1], [1, 1, 1, 0, 0]], dtype=torch.float32)  # burn-in 2; none
    cut = burn_in_end(loss_mask)
    assert cut.tolist() == [[False, False, True, False, False], [True, False, False, False, False]]
    for with_cut in (True, False):
        x.grad = None
        out, _ = core.forward_sequence(x, torch.zeros(2, core.weight_hh.shape[1] * (2 if kind == "lstm" else 1)),
                                       torch.zeros(2, 5, dtype=torch.bool), cut=cut if with_cut else None)
        (out.sum(-1) * loss_mask).sum().backward()
        burn_in_grad = x.grad[0, :2].abs().sum().item()
        assert (burn_in_grad == 0.0) == with_cut  # cut: the burn-in only refreshes the state
        assert x.grad[1, :3].abs().sum().item() > 0  # a sequence without burn-in learns from its first step


@pytest.mark.parametrize("algo", ["ppo", "dqn"])
def test_image_observations_train_and_evaluate_through_a_core(algo):
    # the CNN's features go through the core; runners act through torch (the numpy path has no CNN)
    extra = {"learning_starts": 0} if algo == "dqn" else {}
    config = (PPOConfig if algo == "ppo" else DQNConfig)(
        env="rlfleet/Image-v0", memory="lstm", memory_size=16, max_seq_len=8, num_envs_per_runner=2,
        rollout_fragment_length=16, minibatch_size=16, **extra)
    with config.build() as trained:
        assert trained.module_spec.build().encoder.encoders[0].cnn is not None
        results = [trained.train() for _ in range(2)]
        evaluation = trained.evaluate()
    loss = "losses/policy_loss" if algo == "ppo" else "losses/td_loss"
    assert np.isfinite(results[-1][loss]) and evaluation["evaluation/num_episodes"] == 10

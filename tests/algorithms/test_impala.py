"""IMPALA: the learner batch, the loss against hand-computed numbers and against GAE on
policy, the driver's counters and dropping in process, and the asynchronous fleet on Ray
(a request in flight per runner, weights picked up as runners return, a stalled runner
not waited for, a killed one restarted). CartPole under `-m learning`.

In process (``num_env_runners=0``) ``submit`` runs the sample at once, so the fragment a
runner returns in iteration i was sampled in iteration i-1, before that iteration's
updates: its policy lag is the number of versions published in iteration i-1. The local
tests below rely on this to produce lag deterministically.

Thresholds of the learning checks come from measurements (seeds 0-5 and 0-2):
- Corridor of 10 cells: every seed's mean return was >= 0.90 after 30 iterations of
  8 envs x 32 steps (~0.4 s), and greedy evaluation walked straight to the goal.
- CartPole-v1 with tuned_examples/impala/CartPole-v1.yaml on 2 Ray runners: seeds 0-2
  first reached a mean return of 150 at 20k-27k env steps (~5 s); the test allows 100k.
"""

import os
import signal

import numpy as np
import pytest
import torch

import rlfleet.algorithms.impala.learner as impala_learner_module
from rlfleet.algorithms.impala import IMPALA, IMPALAConfig, IMPALALearner, impala_loss, learner_batch
from rlfleet.envs.testing import CorridorEnv
from gymnasium import spaces
from rlfleet.rl.core import Fragment
from rlfleet.rl.config import ConfigError
from rlfleet.scripts.tools.experiment import load_experiment
from rlfleet.rl.models.module import ModuleSpec
from rlfleet.rl.postprocessing import compute_gae
from tests.fleet_envs import processes, remote_calls_of, start_shared_ray, stop_shared_ray

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


# ---------------------------------------------------------------------------------------
# learner_batch: fragments side by side, final observations at their (t, b) in the batch.


def fragment(T, B, *, seed, finals=(), obs_dtype=np.float32, nested=False):
    """A hand-made fragment; ``finals`` is [(t, b)] of truncations, each with a distinct
    final observation (value 100 + seed + 10 t + b)."""
    rng = np.random.default_rng(seed)

    def obs_of(shape, value=None):
        if value is None:
            vec = rng.integers(0, 50, shape + (2,)).astype(obs_dtype)
        else:
            vec = np.full(shape + (2,), value, obs_dtype)
        if not nested:
            return vec
        mode = np.full(shape, -1 if value is None else int(value), np.int64)
        return {"mode": mode, "pos": vec}

    truncated = np.zeros((T, B), bool)
    final_obs = []
    for t, b in finals:
        truncated[t, b] = True
        final_obs.append((t, b, obs_of((), 100 + seed + 10 * t + b)))
    batch = {
        "obs": obs_of((T, B)),
        "actions": [rng.integers(0, 2, (T, B))],
        "logp": rng.normal(size=(T, B)).astype(np.float32),
        "rewards": rng.normal(size=(T, B)).astype(np.float32),
        "terminated": np.zeros((T, B), bool),
        "truncated": truncated,
        "bootstrap_obs": obs_of((1, B)),
        # Columns a runner also returns that the learner must not be sent.
        "values": np.zeros((T, B), np.float32),
        "next_values": np.zeros((T, B), np.float32),
        "is_first": np.zeros((T, B), bool),
    }
    return Fragment(batch, [], [], T * B, weights_version=1, final_obs=final_obs)


def test_learner_batch_puts_fragments_side_by_side_and_gathers_final_obs_at_offset_columns():
    a = fragment(3, 2, seed=0, finals=[(1, 1)])
    b = fragment(3, 3, seed=1, finals=[(0, 0), (2, 2)])
    batch = learner_batch([a, b])

    assert set(batch) == {"obs", "actions", "logp", "rewards", "terminated", "truncated", "bootstrap_obs",
                          "final_tb", "final_obs"}
    for key in ("obs", "logp", "rewards", "terminated", "truncated", "bootstrap_obs"):
        np.testing.assert_array_equal(batch[key], np.concatenate([a.batch[key], b.batch[key]], axis=1), err_msg=key)
    assert len(batch["actions"]) == 1
    np.testing.assert_array_equal(batch["actions"][0],
                                  np.concatenate([a.batch["actions"][0], b.batch["actions"][0]], axis=1))
    assert batch["obs"].shape == (3, 5, 2) and batch["bootstrap_obs"].shape == (1, 5, 2)

    # b's columns start at 2 (a has 2 envs): its (0, 0) and (2, 2) land at (0, 2) and (2, 4).
    assert batch["final_tb"].dtype == np.int64
    np.testing.assert_array_equal(batch["final_tb"], [[1, 1], [0, 2], [2, 4]])
    np.testing.assert_array_equal(batch["final_obs"], [[111, 111], [101, 101], [123, 123]])
    assert batch["final_obs"].dtype == np.float32
    # Every final observation marks a truncation at the same place in the joined batch.
    assert all(batch["truncated"][t, b] for t, b in batch["final_tb"])
    assert "final_tb" not in a.batch and "final_tb" not in b.batch  # fragments are not modified


def test_learner_batch_stacks_nested_final_obs_leaf_by_leaf():
    a = fragment(2, 1, seed=0, finals=[(0, 0)], nested=True)
    b = fragment(2, 2, seed=3, finals=[(1, 1)], nested=True)
    batch = learner_batch([a, b])
    np.testing.assert_array_equal(batch["final_tb"], [[0, 0], [1, 2]])
    assert set(batch["final_obs"]) == {"mode", "pos"}
    np.testing.assert_array_equal(batch["final_obs"]["mode"], [100, 114])
    np.testing.assert_array_equal(batch["final_obs"]["pos"], [[100, 100], [114, 114]])
    assert batch["obs"]["pos"].shape == (2, 3, 2) and batch["obs"]["mode"].shape == (2, 3)


@pytest.mark.parametrize("nested", [False, True])
def test_learner_batch_without_truncations_has_empty_finals_with_the_obs_dtype(nested):
    batch = learner_batch([fragment(4, 2, seed=0, obs_dtype=np.uint8, nested=nested),
                           fragment(4, 1, seed=1, obs_dtype=np.uint8, nested=nested)])
    assert batch["final_tb"].shape == (0, 2) and batch["final_tb"].dtype == np.int64
    if nested:
        assert batch["final_obs"]["pos"].shape == (0, 2) and batch["final_obs"]["pos"].dtype == np.uint8
        assert batch["final_obs"]["mode"].shape == (0,) and batch["final_obs"]["mode"].dtype == np.int64
    else:
        assert batch["final_obs"].shape == (0, 2) and batch["final_obs"].dtype == np.uint8


def test_learner_batch_of_one_fragment():
    a = fragment(3, 2, seed=0, finals=[(2, 0)])
    batch = learner_batch([a])
    np.testing.assert_array_equal(batch["obs"], a.batch["obs"])
    np.testing.assert_array_equal(batch["final_tb"], [[2, 0]])
    assert "final_tb" not in a.batch and "values" not in batch


# ---------------------------------------------------------------------------------------
# impala_loss against hand-computed numbers.


def t2(*rows, grad=False):
    return torch.tensor(rows, dtype=torch.float64, requires_grad=grad)


def test_impala_loss_by_hand_2x2():
    target_logp = t2([-0.5, -1.0], [-2.0, -0.25], grad=True)
    values = t2([1.0, 0.5], [0.0, 2.0], grad=True)
    entropy = t2([0.6, 0.4], [0.7, 0.3], grad=True)
    vs = t2([1.5, 0.5], [-1.0, 1.0])
    pg_advantages = t2([2.0, -1.0], [0.5, 4.0])
    loss, m = impala_loss(target_logp, values, entropy, vs, pg_advantages, vf_coef=0.5, entropy_coef=0.1)

    # policy: -(2*-.5 + -1*-1 + .5*-2 + 4*-.25) / 4 = -(-1 + 1 - 1 - 1) / 4 = .5
    # value:  .5 * ((1-1.5)^2 + 0^2 + (0+1)^2 + (2-1)^2) / 4 = .5 * 2.25 / 4 = .28125
    # entropy: (.6 + .4 + .7 + .3) / 4 = .5
    # loss = .5 + .5 * .28125 - .1 * .5 = .590625
    assert m["losses/policy_loss"].item() == pytest.approx(0.5, abs=1e-12)
    assert m["losses/value_loss"].item() == pytest.approx(0.28125, abs=1e-12)
    assert m["losses/entropy"].item() == pytest.approx(0.5, abs=1e-12)
    assert loss.item() == pytest.approx(0.590625, abs=1e-12)
    assert all(not v.requires_grad for v in m.values())

    loss.backward()
    # d/dlogp = -A/4; d/dV = vf_coef * (V - vs) / 4; d/dH = -entropy_coef / 4
    torch.testing.assert_close(target_logp.grad, t2([-0.5, 0.25], [-0.125, -1.0]))
    torch.testing.assert_close(values.grad, t2([-0.0625, 0.0], [0.125, 0.125]))
    torch.testing.assert_close(entropy.grad, t2([-0.025, -0.025], [-0.025, -0.025]))


# ---------------------------------------------------------------------------------------
# IMPALALearner's loss path: V-trace on policy is the discounted return with bootstrap.

OBS_DIM, T, B, GAMMA = 3, 5, 3, 0.9
TERMINATED = [(1, 0)]
TRUNCATED = [(2, 1), (4, 2)]  # one mid-fragment, one on the fragment's last step


def make_learner(**overrides):
    spec = ModuleSpec(spaces.Box(-10.0, 10.0, (OBS_DIM,), np.float32), spaces.Discrete(2))
    config, _ = IMPALAConfig(device="cpu", gamma=GAMMA, seed=0, **overrides).with_family_defaults("discrete")
    torch.manual_seed(0)
    return IMPALALearner(module_spec=spec, config=config)


def module_batch(learner, seed=0):
    """A (T, B) batch whose behaviour logp is the learner's own (on policy). The final
    observations of truncations are far from the next episode's first observation, so
    bootstrapping from the wrong one shows."""
    rng = np.random.default_rng(seed)
    obs = rng.uniform(-1, 1, (T, B, OBS_DIM)).astype(np.float32)
    actions = rng.integers(0, 2, (T, B))
    terminated = np.zeros((T, B), bool)
    truncated = np.zeros((T, B), bool)
    for t, b in TERMINATED:
        terminated[t, b] = True
    for t, b in TRUNCATED:
        truncated[t, b] = True
    with torch.no_grad():
        dist, _ = learner.module.forward_train(torch.from_numpy(obs.reshape(T * B, OBS_DIM)))
        logp = dist.logp([torch.from_numpy(actions.reshape(-1))]).reshape(T, B).numpy()
    return {
        "obs": obs,
        "actions": [actions],
        "logp": logp.astype(np.float32),
        "rewards": rng.normal(size=(T, B)).astype(np.float32),
        "terminated": terminated,
        "truncated": truncated,
        "bootstrap_obs": rng.uniform(-1, 1, (1, B, OBS_DIM)).astype(np.float32),
        "final_tb": np.array(TRUNCATED, np.int64),
        "final_obs": rng.uniform(5, 8, (len(TRUNCATED), OBS_DIM)).astype(np.float32),
    }


def values_of(learner, obs):
    with torch.no_grad():
        flat = torch.from_numpy(obs.reshape(-1, OBS_DIM))
        return learner.module.compute_values(flat).numpy().reshape(obs.shape[:-1]).astype(np.float64)


def spy_on_loss(monkeypatch):
    """Record the inputs IMPALALearner hands to impala_loss."""
    calls = []
    real = impala_learner_module.impala_loss

    def spy(target_logp, values, entropy, vs, pg_advantages, **kw):
        calls.append({"target_logp": target_logp, "values": values, "entropy": entropy, "vs": vs,
                      "pg_advantages": pg_advantages, **kw})
        return real(target_logp, values, entropy, vs, pg_advantages, **kw)

    monkeypatch.setattr(impala_learner_module, "impala_loss", spy)
    return calls


def reference_returns(batch, V_boot, V_final):
    """Discounted returns with bootstrap, one env column at a time: 0 after a
    termination, V(final observation) after a truncation, V(bootstrap_obs) after the
    fragment's last step."""
    r, term, trunc = batch["rewards"].astype(np.float64), batch["terminated"], batch["truncated"]
    finals = {(int(t), int(b)): V_final[k] for k, (t, b) in enumerate(batch["final_tb"])}
    G = np.zeros((T, B))
    for b in range(B):
        for t in range(T - 1, -1, -1):
            if term[t, b]:
                G[t, b] = r[t, b]
            elif trunc[t, b]:
                G[t, b] = r[t, b] + GAMMA * finals[(t, b)]
            elif t == T - 1:
                G[t, b] = r[t, b] + GAMMA * V_boot[b]
            else:
                G[t, b] = r[t, b] + GAMMA * G[t + 1, b]
    return G


def test_on_policy_vtrace_targets_are_the_bootstrapped_returns_gae_lambda_one(monkeypatch):
    learner = make_learner(vf_coef=0.5, entropy_coef=0.01)
    batch = module_batch(learner)
    calls = spy_on_loss(monkeypatch)
    loss, metrics = learner.compute_loss(learner.to_tensors(batch))
    (call,) = calls
    vs, pg_adv = call["vs"].numpy(), call["pg_advantages"].numpy()

    V = values_of(learner, batch["obs"])
    V_boot = values_of(learner, batch["bootstrap_obs"])[0]
    V_final = values_of(learner, batch["final_obs"])
    next_values = np.concatenate([V[1:], V_boot[None]])  # (T, B)
    for k, (t, b) in enumerate(TRUNCATED):
        next_values[t, b] = V_final[k]
    gae_adv, gae_targets = compute_gae(batch["rewards"], V.astype(np.float32), next_values.astype(np.float32),
                                       batch["terminated"], batch["truncated"], gamma=GAMMA, lam=1.0)
    np.testing.assert_allclose(vs, gae_targets, rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(pg_adv, gae_adv, rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(vs, reference_returns(batch, V_boot, V_final), rtol=1e-5, atol=1e-5)

    # The learner's values, logp and entropy are its module's, with gradient; the loss is
    # impala_loss of them against the references.
    np.testing.assert_allclose(call["values"].detach().numpy(), V, rtol=1e-6, atol=1e-6)
    np.testing.assert_allclose(call["target_logp"].detach().numpy(), batch["logp"], rtol=1e-6, atol=1e-6)
    assert call["values"].requires_grad and call["target_logp"].requires_grad
    assert not call["vs"].requires_grad and not call["pg_advantages"].requires_grad
    expected, _ = impala_loss(call["target_logp"], call["values"], call["entropy"], torch.from_numpy(gae_targets),
                              torch.from_numpy(gae_adv), vf_coef=0.5, entropy_coef=0.01)
    assert loss.item() == pytest.approx(expected.item(), rel=1e-5)
    assert metrics["losses/mean_rho"].item() == pytest.approx(1.0, abs=1e-6)  # on policy: every ratio is 1


def test_truncation_bootstraps_from_the_final_observation_not_the_next_episodes_first(monkeypatch):
    learner = make_learner()
    batch = module_batch(learner)
    V = values_of(learner, batch["obs"])
    V_final = values_of(learner, batch["final_obs"])
    (t, b) = TRUNCATED[0]
    # The construction matters: the next row's observation is the next episode's start.
    assert abs(V_final[0] - V[t + 1, b]) > 0.05, (V_final[0], V[t + 1, b])

    calls = spy_on_loss(monkeypatch)
    learner.compute_loss(learner.to_tensors(batch))
    without = {**batch, "final_tb": np.zeros((0, 2), np.int64), "final_obs": batch["final_obs"][:0]}
    learner.compute_loss(learner.to_tensors(without))
    vs, vs_without = calls[0]["vs"].numpy(), calls[1]["vs"].numpy()

    # On policy a truncated step's target is r + gamma V(final observation), exactly.
    assert vs[t, b] == pytest.approx(batch["rewards"][t, b] + GAMMA * V_final[0], abs=1e-5)
    assert vs_without[t, b] == pytest.approx(batch["rewards"][t, b] + GAMMA * V[t + 1, b], abs=1e-5)
    # The last step's truncation too: r + gamma V(final), not V(bootstrap_obs).
    t2_, b2 = TRUNCATED[1]
    assert vs[t2_, b2] == pytest.approx(batch["rewards"][t2_, b2] + GAMMA * V_final[1], abs=1e-5)


def test_off_policy_mean_rho_is_the_mean_clipped_ratio():
    learner = make_learner(vtrace_rho_bar=1.0)
    batch = module_batch(learner)
    # Behaviour log-probabilities shifted by +-log 2: ratios 1/2 and 2 (clipped to 1), in equal numbers.
    shift = np.where(np.arange(T * B).reshape(T, B) % 2 == 0, np.log(2.0), -np.log(2.0)).astype(np.float32)
    assert (shift > 0).sum() * 2 == T * B + 1  # 8 of 15 at ratio 1/2, 7 at ratio 2
    _, metrics = learner.compute_loss(learner.to_tensors({**batch, "logp": batch["logp"] + shift}))
    assert metrics["losses/mean_rho"].item() == pytest.approx((8 * 0.5 + 7 * 1.0) / 15, abs=1e-5)


def test_update_takes_num_epochs_steps_at_the_scheduled_lr(monkeypatch):
    learner = make_learner(num_epochs=3, lr_schedule=[[0, 1e-3], [1000, 0.0]])
    steps = []
    real = learner.gradient_step
    monkeypatch.setattr(learner, "gradient_step", lambda data: steps.append(1) or real(data))
    before = {k: v.clone() for k, v in learner.module.state_dict().items()}
    metrics = learner.update(module_batch(learner), env_steps=250).metrics
    assert len(steps) == 3
    assert learner.optimizers["default"].lr == pytest.approx(0.75e-3)
    assert {"losses/policy_loss", "losses/value_loss", "losses/entropy", "losses/mean_rho",
            "losses/grad_norm"} <= set(metrics)
    assert all(isinstance(v, (int, float)) for v in metrics.values())
    assert any(not torch.equal(before[k], v) for k, v in learner.module.state_dict().items())


def test_reward_scale_scales_the_rewards_the_learner_sees(monkeypatch):
    learner = make_learner(reward_scale=0.5)
    batch = module_batch(learner)
    calls = spy_on_loss(monkeypatch)
    learner.compute_loss(learner.to_tensors(batch))
    scaled = make_learner()
    scaled_batch = {**batch, "rewards": batch["rewards"] * 0.5}
    scaled.compute_loss(scaled.to_tensors(scaled_batch))
    torch.testing.assert_close(calls[0]["vs"], calls[1]["vs"])


# ---------------------------------------------------------------------------------------
# Config errors name the numbers.


@pytest.mark.parametrize("overrides,message", [
    ({"max_queue_fragments": 1, "train_batch_fragments": 2},
     "max_queue_fragments 1 < train_batch_fragments 2: a batch could never be filled"),
    ({"train_batch_fragments": 0}, "train_batch_fragments must be > 0, got 0"),
    ({"broadcast_interval": 0}, "broadcast_interval must be > 0, got 0"),
    ({"max_policy_lag": -1}, "max_policy_lag must be >= 0, got -1"),
    ({"vtrace_c_bar": 0.0}, "vtrace_rho_bar and vtrace_c_bar must be > 0, got 1.0, 0.0"),
    ({"num_learners": 3, "num_envs_per_runner": 8, "train_batch_fragments": 2}, "the learner batch's 16 envs (train_batch_fragments 2 x num_envs_per_runner 8) must divide "
                          "by num_learners 3: each learner takes an equal share of the envs"),
])
def test_config_errors_quote_the_numbers(overrides, message):
    with pytest.raises(ConfigError) as info:
        IMPALAConfig(env=CorridorEnv, **overrides)
    assert str(info.value) == message


def test_normalize_obs_rides_on_the_asynchronous_requests():
    cfg = IMPALAConfig(env="Pendulum-v1", normalize_obs=True, num_envs_per_runner=2, rollout_fragment_length=10,
                       train_batch_fragments=1)
    with cfg.build() as algo:
        runner = algo.env_runner_group.group.actors[0]
        published = {}  # weights version -> count of the statistics published with it
        publish = algo.env_runner_group.publish_weights
        algo.env_runner_group.publish_weights = lambda w, v, connector_state=None: (
            published.update({v: connector_state[0]["count"]}), publish(w, v, connector_state=connector_state))
        for _ in range(3):
            algo.train()
        # Every observation the runner normalised reached the driver's statistics once: the
        # 2 from reset, then one per env step of each sub-env (local requests run when
        # waited on, so none is half-counted in flight).
        assert algo.connector.base[0].count == 2 + algo.env_steps
        # the runner normalises with the state published with the weights it holds
        assert runner.weights_version in published and runner.filter.base[0].count == published[runner.weights_version]
        assert published[runner.weights_version] > 2


# ---------------------------------------------------------------------------------------
# The driver in process: counters, lag, dropping.

LOCAL = dict(env=CorridorEnv, env_config={"length": 10}, seed=0, num_env_runners=0, num_envs_per_runner=4,
             rollout_fragment_length=8)
STEPS = 4 * 8  # env steps per fragment


def local_algo(**overrides):
    return IMPALAConfig(**{**LOCAL, **overrides}).build()


def spy_on_fragments(algo, monkeypatch):
    """Record every fragment as it arrives, with the driver's version at arrival."""
    arrived = []
    real = algo.env_runner_group.sample_async

    def spy():
        fragments = real()
        arrived.extend((f, algo.weights_version) for f in fragments)
        return fragments

    monkeypatch.setattr(algo.env_runner_group, "sample_async", spy)
    return arrived


def spy_on_learner(algo, monkeypatch):
    """Record every batch the learner updates on."""
    batches = []
    learner = algo.learner_group.learner
    real = learner.update

    def spy(batch, *, env_steps):
        batches.append(batch)
        return real(batch, env_steps=env_steps)

    monkeypatch.setattr(learner, "update", spy)
    return batches


def test_local_impala_counts_steps_updates_and_broadcasts_every_k_updates(monkeypatch):
    algo = local_algo(train_batch_fragments=2, broadcast_interval=2)
    try:
        assert algo.runtime.name == "local" and algo.weights_version == 1
        arrived = spy_on_fragments(algo, monkeypatch)
        results = [algo.train() for _ in range(8)]
    finally:
        algo.stop()
    for i, r in enumerate(results, start=1):
        # One fragment per iteration; a learner batch every 2nd; a broadcast every 2nd update.
        assert r["iteration"] == i
        assert r["env_steps"] == r["env_runners/0/env_steps"] == i * STEPS
        assert r["learner/updates"] == (1 if i % 2 == 0 else 0)
        assert r["learner/updates_total"] == i // 2
        assert r["weights_version"] == 1 + (i // 2) // 2
        assert r["learner_queue_size"] == i % 2
        assert r["num_fragments_dropped_stale"] == r["num_fragments_dropped_queue_full"] == 0
        assert ("losses/policy_loss" in r) == (i % 2 == 0)
    assert [f.weights_version for f, _ in arrived] == [1, 1, 1, 1, 1, 2, 2, 2]
    # Lag = versions published in the previous iteration (see the module docstring).
    versions = [1] + [r["weights_version"] for r in results]
    lags = [0] + [versions[i - 1] - versions[i - 2] for i in range(2, 9)]
    assert [r["policy_lag_max"] for r in results] == lags == [0, 0, 0, 0, 1, 0, 0, 0]
    assert [r["policy_lag_mean"] for r in results] == lags
    assert [v - f.weights_version for f, v in arrived] == lags


def test_stale_fragments_are_dropped_counted_and_not_learned(monkeypatch):
    # max_policy_lag 0 with one update and broadcast per fragment: every other fragment
    # was sampled one version back (see the module docstring) and is dropped.
    algo = local_algo(train_batch_fragments=1, broadcast_interval=1, max_policy_lag=0)
    try:
        arrived = spy_on_fragments(algo, monkeypatch)
        learned = spy_on_learner(algo, monkeypatch)
        results = [algo.train() for _ in range(6)]
    finally:
        algo.stop()
    assert [v - f.weights_version for f, v in arrived] == [0, 1, 0, 1, 0, 1]
    assert [r["num_fragments_dropped_stale"] for r in results] == [0, 1, 1, 2, 2, 3]
    assert [r["learner/updates"] for r in results] == [1, 0, 1, 0, 1, 0]
    assert [r["weights_version"] for r in results] == [2, 2, 3, 3, 4, 4]
    assert [r["policy_lag_max"] for r in results] == [0, 1, 0, 1, 0, 1]
    # Dropped fragments were still sampled: their steps count.
    assert [r["env_steps"] for r in results] == [STEPS * i for i in range(1, 7)]
    assert all(r["num_fragments_dropped_queue_full"] == 0 for r in results)
    # The learner saw exactly the fresh fragments, 1st, 3rd and 5th.
    assert len(learned) == 3
    for batch, (frag, _) in zip(learned, arrived[::2]):
        np.testing.assert_array_equal(batch["obs"], frag.batch["obs"])


def queue_counts(result):
    """(fragments dropped from a full queue so far, updates this iteration, fragments waiting)."""
    return result["num_fragments_dropped_queue_full"], result["learner/updates"], result["learner_queue_size"]


def test_a_full_queue_drops_the_oldest_fragments_and_counts_them(monkeypatch):
    algo = local_algo(train_batch_fragments=2, max_queue_fragments=2)
    try:
        runner = algo.env_runner_group.group.actors[0]
        frags = [runner.sample() for _ in range(5)]
        deliveries = [frags[:1], frags[1:], []]  # one fragment, then four at once, then none
        monkeypatch.setattr(algo.env_runner_group, "sample_async", lambda: deliveries.pop(0))
        learned = spy_on_learner(algo, monkeypatch)
        first, second, third = algo.train(), algo.train(), algo.train()
    finally:
        algo.stop()
    assert queue_counts(first) == (0, 0, 1)
    # Queue [0] + 1 -> [0, 1]; + 2 drops 0; + 3 drops 1; + 4 drops 2 -> [3, 4], one batch.
    assert queue_counts(second) == (3, 1, 0)
    assert second["num_fragments_dropped_stale"] == 0
    assert second["env_steps"] == 5 * STEPS  # dropped or not, sampled steps count
    (batch,) = learned
    np.testing.assert_array_equal(batch["obs"], np.concatenate([frags[3].batch["obs"], frags[4].batch["obs"]], axis=1))
    assert queue_counts(third) == (3, 0, 0) and third["env_steps"] == 5 * STEPS
    assert "losses/policy_loss" not in third


def test_leftover_fragments_wait_in_the_queue_for_the_next_batch(monkeypatch):
    algo = local_algo(train_batch_fragments=2, max_queue_fragments=3)
    try:
        runner = algo.env_runner_group.group.actors[0]
        frags = [runner.sample() for _ in range(5)]
        deliveries = [frags[:1], frags[1:]]
        monkeypatch.setattr(algo.env_runner_group, "sample_async", lambda: deliveries.pop(0))
        learned = spy_on_learner(algo, monkeypatch)
        algo.train()
        result = algo.train()
    finally:
        algo.stop()
    # [0] + 1, 2 -> [0, 1, 2]; + 3 drops 0; + 4 drops 1 -> [2, 3, 4]; batch (2, 3), 4 waits.
    assert queue_counts(result) == (2, 1, 1)
    (batch,) = learned
    np.testing.assert_array_equal(batch["obs"], np.concatenate([frags[2].batch["obs"], frags[3].batch["obs"]], axis=1))
    assert algo.queue[0] is frags[4]


def test_seeded_local_runs_are_reproducible():
    def run():
        algo = local_algo(seed=7)
        try:
            results = [algo.train() for _ in range(4)]
            return algo.learner_group.get_weights(), [r["episode_return_mean"] for r in results]
        finally:
            algo.stop()

    (w1, r1), (w2, r2) = run(), run()
    np.testing.assert_array_equal(r1, r2)
    for k in w1:
        np.testing.assert_array_equal(w1[k], w2[k], err_msg=k)


CORRIDOR_OPTIMUM = 1.0 - 9 * 0.01  # 10 steps right: 9 step costs, then the goal


def test_impala_learns_the_corridor_in_process():
    algo = IMPALAConfig(env=CorridorEnv, env_config={"length": 10}, seed=0, num_envs_per_runner=8,
                        rollout_fragment_length=32, train_batch_fragments=1, lr=3e-3).build()
    try:
        for _ in range(30):
            result = algo.train()
        evaluation = algo.evaluate()
    finally:
        algo.stop()
    assert result["env_steps"] == 30 * 256 and result["learner/updates_total"] == 30
    assert result["episode_return_mean"] >= 0.7, result["episode_return_mean"]  # random: -0.18
    assert evaluation["evaluation/episode_return_min"] == pytest.approx(CORRIDOR_OPTIMUM)


# ---------------------------------------------------------------------------------------
# On Ray: a request in flight on every runner, weights picked up as runners return.

RAY_FLEET = dict(env="CartPole-v1", seed=0, num_env_runners=2, num_envs_per_runner=2, rollout_fragment_length=16,
                 train_batch_fragments=1)
RAY_STEPS = 2 * 16


@pytest.fixture(scope="module")
def shared_ray():
    start_shared_ray()
    yield
    stop_shared_ray()


def runner_steps(result, index):
    return result.get(f"env_runners/{index}/env_steps", 0)


def delivered(prev, result):
    """Runner indices whose fragments arrived in ``result``'s iteration."""
    return [i for i in (0, 1) if runner_steps(result, i) > runner_steps(prev, i)]


def test_ray_runners_keep_a_request_in_flight_and_pick_up_the_newest_weights(shared_ray):
    algo = IMPALAConfig(**RAY_FLEET).build()
    group = algo.env_runner_group
    try:
        assert algo.runtime.name == "ray"
        results = [algo.train()]
        assert sorted(group.in_flight.values()) == [0, 1]
        with remote_calls_of(group.group) as sent:
            for _ in range(6):
                prev, versions_before, (ref, version) = results[-1], list(group.runner_versions), group.weights
                assert version == prev["weights_version"]
                sent.clear()
                r = algo.train()
                results.append(r)
                assert sorted(group.in_flight.values()) == [0, 1], "a runner was left without a request"
                assert 0 <= r["policy_lag_mean"] <= r["policy_lag_max"]
                came = delivered(prev, r)
                assert came and r["env_steps"] == prev["env_steps"] + len(came) * RAY_STEPS
                assert r["learner/updates"] == len(came)  # one fragment per learner batch
                # Only runners that returned were sent anything: the newest weights (every
                # returning runner is behind, the learner updated since it was sent its
                # request), then a new request. The other runner's request is left alone.
                assert sorted({i for i, _ in sent}) == came
                for i in (0, 1):
                    calls = [args for j, args in sent if j == i]
                    if i in came:
                        assert versions_before[i] < version
                        assert [c[0] for c in calls] == ["set_weights", "sample"]
                        assert calls[0][1] == ref.ref and calls[0][2] == version
                        assert group.runner_versions[i] == version
                    else:
                        assert calls == [] and group.runner_versions[i] == versions_before[i]
    finally:
        algo.stop()


def test_ray_a_stalled_runner_is_not_waited_for_and_catches_up_when_it_returns(shared_ray):
    algo = IMPALAConfig(**RAY_FLEET).build()
    group = algo.env_runner_group
    stopped = None
    try:
        results = [algo.train(), algo.train()]
        # pids() runs on each runner after its request in flight (calls to an actor run in
        # order), so runner 0 owes exactly one more fragment, already sampled.
        pids = group.group.pids()
        os.kill(pids[0], signal.SIGSTOP)
        stopped = pids[0]
        owed = runner_steps(results[-1], 0) + RAY_STEPS
        while runner_steps(results[-1], 0) < owed and len(results) < 20:
            results.append(algo.train())
        assert runner_steps(results[-1], 0) == owed
        frozen = group.runner_versions[0]
        (stalled_future,) = [f for f, i in group.in_flight.items() if i == 0]

        # One iteration with runner 1 alone, so the next fragments' lag is one update.
        results.append(algo.train())
        assert delivered(results[-2], results[-1]) == [1]
        for _ in range(4):  # runner 0 cannot answer; the driver goes on with runner 1
            prev = results[-1]
            r = algo.train()
            results.append(r)
            assert delivered(prev, r) == [1] and r["env_steps"] == prev["env_steps"] + RAY_STEPS
            assert r["learner/updates"] == 1 and r["weights_version"] == prev["weights_version"] + 1
            assert group.runner_versions == [frozen, prev["weights_version"]]
            # Runner 1 sampled with the weights of one update before: lag exactly 1.
            assert r["policy_lag_max"] == 1 and r["policy_lag_mean"] == 1.0
            assert [f for f, i in group.in_flight.items() if i == 0] == [stalled_future]
            assert sorted(group.in_flight.values()) == [0, 1]
            assert r["num_env_runner_restarts"] == 0

        os.kill(stopped, signal.SIGCONT)
        stopped = None
        mark = len(results)
        while runner_steps(results[-1], 0) == owed and len(results) < mark + 40:
            results.append(algo.train())
        back = results[-1]
        assert runner_steps(back, 0) == owed + RAY_STEPS, "runner 0 did not deliver after SIGCONT"
        # Its fragment was sampled with the version it held when stalled.
        assert back["policy_lag_max"] == results[-2]["weights_version"] - frozen >= 4
        assert group.runner_versions[0] == results[-2]["weights_version"]  # caught up on return
        assert back["num_env_runner_restarts"] == 0 and sorted(group.in_flight.values()) == [0, 1]
    finally:
        if stopped is not None:
            os.kill(stopped, signal.SIGCONT)
        algo.stop()


def test_ray_a_runner_killed_with_sigkill_is_restarted_and_training_goes_on(shared_ray, capsys):
    algo = IMPALAConfig(**RAY_FLEET).build()
    group = algo.env_runner_group
    try:
        results = [algo.train(), algo.train()]
        pids = group.group.pids()
        os.kill(pids[0], signal.SIGKILL)
        while results[-1]["num_env_runner_restarts"] == 0 and len(results) < 50:
            results.append(algo.train())
        hit, at = results[-1], len(results) - 1
        assert hit["num_env_runner_restarts"] == 1 and hit["num_fragments_dropped"] == 1
        # The restarted runner was given the newest weights published before the restart.
        assert group.runner_versions[0] == results[-2]["weights_version"]
        assert sorted(group.in_flight.values()) == [0, 1]
        mark = runner_steps(hit, 0)
        while runner_steps(results[-1], 0) == mark and len(results) < 100:
            results.append(algo.train())
        results += [algo.train() for _ in range(3)]

        assert [r["iteration"] for r in results] == list(range(1, len(results) + 1))
        assert runner_steps(results[-1], 0) > mark, "the restarted runner never delivered"
        assert all(b["env_steps"] >= a["env_steps"] for a, b in zip(results, results[1:]))
        assert results[-1]["env_steps"] > hit["env_steps"]
        assert results[-1]["learner/updates_total"] > hit["learner/updates_total"]
        assert all(r["num_env_runner_restarts"] == 1 for r in results[at:])
        new_pids = group.group.pids()
        assert new_pids[0] != pids[0] and new_pids[1] == pids[1]
        assert next(p.args for p in processes() if p.pid == new_pids[0]).startswith("ray::EnvRunner")
        err = capsys.readouterr().err
        assert "env runner 0 failed (" in err and "restarting it" in err
    finally:
        algo.stop()


@pytest.mark.learning
def test_tuned_impala_example_learns_cartpole_with_two_ray_runners(shared_ray):
    experiment = load_experiment(os.path.join(REPO, "tuned_examples", "impala", "CartPole-v1.yaml"))
    assert experiment.algo == "impala" and experiment.config["num_env_runners"] == 2
    algo = IMPALAConfig.from_dict({**experiment.config, "env": experiment.env, "seed": 0}).build()
    history = []
    try:
        assert isinstance(algo, IMPALA) and algo.env_runner_group.size == 2
        while not history or not (history[-1][1] >= 150 or history[-1][0] >= 100_000):  # NaN: no episode yet
            result = algo.train()
            history.append((result["env_steps"], round(result["episode_return_mean"], 1)))
    finally:
        algo.stop()
    env_steps, ret = history[-1]
    assert ret >= 150 and env_steps <= 100_000, f"(env_steps, mean return) every 10th iteration: {history[::10]}"


def test_impala_acts_and_learns_in_a_continuous_action_space():
    from rlfleet.algorithms.impala import IMPALAConfig

    algo = IMPALAConfig(env="Pendulum-v1", seed=0, num_envs_per_runner=4, rollout_fragment_length=16,
                        train_batch_fragments=1).build()
    try:
        before = {k: v.copy() for k, v in algo.learner_group.get_weights().items()}
        results = [algo.train() for _ in range(3)]
        after = algo.learner_group.get_weights()
        assert any(not np.array_equal(before[k], after[k]) for k in before)
        assert results[-1]["learner/updates_total"] >= 2
        assert np.isfinite(results[-1]["losses/policy_loss"])
    finally:
        algo.stop()

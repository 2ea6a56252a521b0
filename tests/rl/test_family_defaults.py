"""Defaults chosen from the spaces: the family of a task, what each family picks, that a
value the user set is kept, and that the choice is shown (header, first progress row)."""

import json

import numpy as np
import pytest
from gymnasium import spaces

from rlfleet.algorithms.dqn import DQNConfig
from rlfleet.algorithms.impala import IMPALAConfig
from rlfleet.algorithms.ppo import PPOConfig
from rlfleet.envs.testing import ImageEnv
from rlfleet.rl.config import ConfigError
from rlfleet.rl.spaces import space_family
from tests.extras import needs_extra, require_extra

VECTOR = spaces.Box(-1.0, 1.0, (3,), np.float32)
IMAGE = spaces.Box(0, 255, (16, 16, 3), np.uint8)


@pytest.mark.parametrize("obs, act, family", [
    (VECTOR, spaces.Discrete(2), "discrete"),
    (VECTOR, spaces.MultiDiscrete([2, 3]), "discrete"),
    (VECTOR, spaces.Box(-1.0, 1.0, (2,), np.float32), "continuous"),
    (VECTOR, spaces.Tuple((spaces.Discrete(2), spaces.Box(-1.0, 1.0, (1,)))), "continuous"),
    (spaces.Dict({"obs": VECTOR, "action_mask": spaces.MultiBinary(2)}), spaces.Discrete(2), "discrete"),
    (IMAGE, spaces.Discrete(4), "image"),
    (spaces.Dict({"pixels": IMAGE, "speed": VECTOR}), spaces.Box(-1.0, 1.0, (2,)), "image"),
])
def test_space_family(obs, act, family):
    assert space_family(obs, act) == family


def test_ppo_families_pick_their_values_and_keep_what_the_user_set():
    cfg, picked = PPOConfig().with_family_defaults("continuous")
    assert picked == {"num_envs_per_runner": 8, "rollout_fragment_length": 256, "normalize_obs": True,
                      "normalize_rewards": False, "num_epochs": 10, "minibatch_size": 64, "entropy_coef": 0.0}
    assert cfg.train_batch_size == 2048  # SB3's PPO batch
    cfg, picked = PPOConfig(normalize_rewards=True, rollout_fragment_length=128).with_family_defaults("continuous")
    assert cfg.normalize_rewards is True and cfg.rollout_fragment_length == 128
    assert "normalize_rewards" not in picked and "rollout_fragment_length" not in picked
    cfg, _ = PPOConfig().with_family_defaults("discrete")
    # 1024-step batches with an entropy bonus: LunarLander-v3 collapsed on 256 without one (issue 31)
    assert (cfg.rollout_fragment_length, cfg.num_epochs, cfg.minibatch_size, cfg.normalize_obs,
            cfg.entropy_coef) == (128, 10, 64, False, 0.01)
    assert cfg.train_batch_size == 1024
    cfg, _ = PPOConfig().with_family_defaults("image")
    assert (cfg.rollout_fragment_length, cfg.num_epochs, cfg.minibatch_size, cfg.entropy_coef) == (128, 4, 256, 0.01)
    # an env with no normalisers (multi-agent, external) keeps them off unless asked for
    cfg, picked = PPOConfig().with_family_defaults("continuous", connectors=False)
    assert cfg.normalize_obs is False and cfg.normalize_rewards is False


def test_dqn_and_impala_tables():
    cfg, _ = DQNConfig().with_family_defaults("image")
    assert (cfg.rollout_fragment_length, cfg.normalize_obs, cfg.normalize_rewards) == (32, False, False)
    cfg, _ = IMPALAConfig().with_family_defaults("continuous")
    # its own fragment length stays; the normalisers ride on its asynchronous requests
    assert (cfg.rollout_fragment_length, cfg.normalize_obs, cfg.normalize_rewards) == (50, True, True)
    assert (cfg.lr, cfg.num_epochs, cfg.entropy_coef, cfg.train_batch_fragments) == (1e-3, 4, 0.0, 4)
    cfg, _ = IMPALAConfig().with_family_defaults("discrete")
    assert (cfg.lr, cfg.num_epochs, cfg.entropy_coef, cfg.normalize_obs, cfg.normalize_rewards,
            cfg.train_batch_fragments) == (1e-3, 4, 0.01, False, True, 2)


def test_a_run_reports_its_defaults_in_the_header_and_first_progress_row(tmp_path, capsys):
    cfg = PPOConfig(env="Pendulum-v1", logdir=str(tmp_path), log_to_console=True, rollout_fragment_length=16,
                    num_envs_per_runner=2, minibatch_size=32)
    with cfg.build() as algo:
        assert algo.config.normalize_obs is True and algo.config.normalize_rewards is False
        assert algo.connector is not None and algo.reward_normalizer is None
        algo.train()
        algo.train()
    header = capsys.readouterr().out.splitlines()[0]
    assert header == ("ppo defaults for continuous actions, vector observations (set any of them to override): "
                      "normalize_obs=True, normalize_rewards=False, num_epochs=10, entropy_coef=0.0")
    rows = [json.loads(line) for line in open(tmp_path / "progress.jsonl")]
    assert rows[0]["defaults/family"] == "continuous" and rows[0]["defaults/normalize_rewards"] is False
    assert "defaults/minibatch_size" not in rows[0]  # set by the user
    assert not any(k.startswith("defaults/") for k in rows[1])


def test_nothing_left_open_means_no_defaults_line(tmp_path, capsys):
    cfg = PPOConfig(env="CartPole-v1", logdir=str(tmp_path), log_to_console=True, num_envs_per_runner=2,
                    rollout_fragment_length=8, normalize_obs=False, normalize_rewards=False, num_epochs=1,
                    minibatch_size=16, entropy_coef=0.0)
    with cfg.build() as algo:
        algo.train()
    assert "defaults" not in capsys.readouterr().out
    assert not any(k.startswith("defaults/") for k in json.loads(open(tmp_path / "progress.jsonl").readline()))


def test_image_env_gets_image_defaults():
    with PPOConfig(env=ImageEnv, env_config={"size": 16, "channels": 3}).build() as algo:
        assert algo.runner_factory.family == "image"
        assert (algo.config.rollout_fragment_length, algo.config.num_epochs, algo.config.minibatch_size) == (128, 4, 256)


def test_rewards_are_scaled_but_returns_stay_raw():
    cfg = PPOConfig(env="Pendulum-v1", num_envs_per_runner=2, rollout_fragment_length=200, minibatch_size=100,
                    num_epochs=1, normalize_rewards=True)
    with cfg.build() as algo:
        fragments = algo.env_runner_group.sample()
        raw = [f.batch["rewards"].copy() for f in fragments]
        algo.record(fragments)
        scaled = fragments[0].batch["rewards"]
        std = algo.reward_normalizer.stats.std
        assert np.allclose(scaled, np.clip(raw[0] / std, -10, 10), atol=1e-5)
        # Pendulum's rewards are in [-16.3, 0]: a whole 200-step episode returns about -1,200,
        # and the counted return is that raw sum, not the scaled one
        assert algo.episode_returns and np.isclose(algo.episode_returns[0], raw[0][:, 0].sum(), rtol=1e-5)


def test_multi_agent_refuses_normalisation_it_cannot_do():
    require_extra("pettingzoo", "pettingzoo")
    with pytest.raises(ConfigError, match="normalize_rewards is not built for multi-agent envs yet"):
        PPOConfig(env="pettingzoo:tictactoe_v3", normalize_rewards=True).build()


def test_checkpoint_keeps_the_reward_scale_and_refuses_another_setting(tmp_path):
    cfg = PPOConfig(env="Pendulum-v1", num_envs_per_runner=2, rollout_fragment_length=50, minibatch_size=50,
                    num_epochs=1, normalize_rewards=True)
    with cfg.build() as algo:
        algo.train()
        algo.save(str(tmp_path / "ckpt"))
        state = algo.reward_normalizer.get_state()
    with cfg.build() as again:
        again.restore(str(tmp_path / "ckpt"))
        # the statistics go on; the running returns start again with the fresh episodes
        assert again.reward_normalizer.get_state() == {**state, "returns": {}}
        assert state["count"] == 100 and state["returns"]
    from rlfleet.rl.checkpoint import CheckpointError
    with cfg.updated({"normalize_rewards": False}).build() as other:
        with pytest.raises(CheckpointError, match="normalize_rewards differs"):
            other.restore(str(tmp_path / "ckpt"))


@pytest.mark.parametrize("name", ["HalfCheetah-v5", "Walker2d-v5"])
def test_mujoco_tuned_examples_load_and_train_an_iteration(name):
    require_extra("mujoco", "mujoco")
    import os

    from rlfleet.scripts.tools.experiment import load_experiment
    from rlfleet.scripts.tools.regression import validate
    from rlfleet.algorithms import get_config_class
    from rlfleet.tuned_examples import ROOT

    path = os.path.join(ROOT, "ppo", f"{name}.yaml")
    exp = validate(path, get_config_class)
    assert "long" in exp.tags and exp.pass_criteria.env_steps == 1_000_000
    # the example writes out what the defaults would pick for it, and scales rewards on top
    example = PPOConfig(**{**load_experiment(path).config, "env": name})
    chosen, _ = PPOConfig(env=name, metrics_smoothing_episodes=20).with_family_defaults("continuous")
    for key in ("num_envs_per_runner", "rollout_fragment_length", "num_epochs", "minibatch_size", "normalize_obs",
                "entropy_coef", "lr", "gamma", "gae_lambda"):
        assert getattr(example, key) in (getattr(chosen, key), None), key
    assert example.normalize_rewards is True and chosen.normalize_rewards is False
    cfg = example.updated({"rollout_fragment_length": 16, "num_envs_per_runner": 2, "minibatch_size": 32})
    with cfg.build() as algo:
        assert algo.runner_factory.family == "continuous"
        result = algo.train()
    assert result["env_steps"] == 32


# Every algorithm on every family it trains, on nothing but its defaults: the values the
# header says were picked are the ones the learner and the runners use (issue 30: DQN read
# num_envs_per_runner before it was picked and crashed on every env without a tuned example).
def _cases() -> list:
    """Every control algorithm in the registry, on an env of every family its action spaces
    allow (a new algorithm is covered by its registry line alone)."""
    from gymnasium import spaces as sp

    from rlfleet.algorithms import ALGORITHMS, get_config_class
    from rlfleet.rl.config import ControlConfig

    envs = {sp.Discrete: [("CartPole-v1", "discrete"), ("rlfleet/Image-v0", "image")],
            sp.Box: [("Pendulum-v1", "continuous"),
                     pytest.param("HalfCheetah-v5", "continuous", marks=needs_extra("mujoco", "mujoco"))]}
    cases = []
    for algo in ALGORITHMS:
        cls = get_config_class(algo)
        if not issubclass(cls, ControlConfig):
            continue  # LM post-training
        for kind, rows in envs.items():
            if kind in cls.action_space_types:
                for row in rows:
                    values, marks = (row.values, row.marks) if hasattr(row, "values") else (row, ())
                    cases.append(pytest.param(algo, *values, marks=marks, id=f"{algo}-{values[0]}"))
    return cases


@pytest.mark.parametrize("algo, env, family", _cases())
def test_each_algorithm_uses_the_defaults_its_header_names(algo, env, family, tmp_path, capsys):
    from rlfleet.algorithms import get_config_class

    from rlfleet.rl.replay.config import OffPolicyConfig

    cls = get_config_class(algo, env)
    # so that two iterations learn
    extra = {"learning_starts": 64, "minibatch_size": 32} if issubclass(cls, OffPolicyConfig) else {}
    cfg = cls(env=env, logdir=str(tmp_path), log_to_console=True, **extra)
    assert cfg.num_envs_per_runner is None and cfg.normalize_obs is None
    shapes, deltas = [], []
    with cfg.build() as run:
        sample = run.env_runner_group.sample_async if algo == "impala" else run.env_runner_group.sample

        def recording_sample(*args, **kwargs):
            fragments = sample(*args, **kwargs)
            shapes.extend(f.batch["rewards"].shape for f in fragments)
            deltas.extend(f.connector_delta is not None for f in fragments)
            return fragments

        setattr(run.env_runner_group, sample.__name__, recording_sample)
        run.train()
        result = run.train()
        learner = run.learner_group.learner
        header = capsys.readouterr().out.splitlines()[0]
        picked = dict(item.split("=") for item in header.split(": ", 1)[1].split(", "))
        assert header.startswith(f"{algo} defaults for ") and run.runner_factory.family == family
        assert picked == {k: str(v) for k, v in run.defaults.items()}
        for key, value in run.defaults.items():
            assert getattr(run.config, key) == value, key
            if hasattr(learner.config, key):
                assert getattr(learner.config, key) == value, f"learner's {key}"
        if "lr" in run.defaults:
            assert learner.lr == pytest.approx(run.defaults["lr"])
            assert [o.lr for o in learner.optimizers.values()] == pytest.approx([run.defaults["lr"]] * len(learner.optimizers))
        # the runners step num_envs_per_runner envs for rollout_fragment_length steps each
        c = run.config  # IMPALA keeps its own fragment length (50) whatever the family
        assert "num_envs_per_runner" in run.defaults and c.rollout_fragment_length is not None
        assert shapes and set(shapes) == {(c.rollout_fragment_length, c.num_envs_per_runner)}
        assert set(deltas) == {run.defaults["normalize_obs"]}
        assert (run.reward_normalizer is not None) == run.defaults["normalize_rewards"]
        if extra:  # one replay stream per env of every runner
            assert run.buffer.num_streams == run.defaults["num_envs_per_runner"]
            assert result["learner/num_grad_steps"] > 0
    assert result["iteration"] == 2 and result["env_steps"] > 0


def test_an_algorithm_defining_init_is_refused_at_class_creation():
    from rlfleet.algorithms.ppo import PPO

    with pytest.raises(TypeError, match="Bad defines __init__; build its state in setup()"):
        class Bad(PPO):
            def __init__(self, config):
                super().__init__(config)


def test_a_learner_refuses_a_config_whose_fields_are_still_left_to_the_spaces():
    # The config is resolved once, by the run (the runner factory), before any learner
    # reads it; a learner built by hand must be given a resolved one, not fill it again.
    from gymnasium import spaces as sp

    from rlfleet.algorithms.ppo.learner import PPOLearner
    from rlfleet.rl.models.module import ModuleSpec

    spec = ModuleSpec(sp.Box(-1.0, 1.0, (3,), np.float32), sp.Discrete(2))
    with pytest.raises(ValueError, match="config field 'num_envs_per_runner' is still left to the spaces"):
        PPOLearner(module_spec=spec, config=PPOConfig(env="CartPole-v1"))
    resolved, _ = PPOConfig(env="CartPole-v1").with_family_defaults("discrete")
    assert PPOLearner(module_spec=spec, config=resolved).config.minibatch_size == 64

import pytest
import yaml

from rlfleet.algorithms.ppo.config import PPOConfig
from rlfleet.rl.config import AlgorithmConfig, ConfigError
from rlfleet.rl.learner import piecewise_linear

# --- unknown keys -------------------------------------------------------------------------


@pytest.mark.parametrize("typo, meant", [("lrr", "lr"), ("num_epoch", "num_epochs"), ("gama", "gamma")])
def test_unknown_key_names_the_closest_valid_key(typo, meant):
    with pytest.raises(ConfigError) as err:
        PPOConfig.from_dict({typo: 1}, source="my.yaml")
    msg = str(err.value)
    assert repr(typo) in msg
    assert f"did you mean {meant!r}" in msg
    assert "my.yaml" in msg
    assert "ppo" in msg


def test_unknown_key_with_nothing_close_still_errors():
    with pytest.raises(ConfigError, match="unknown key 'zzzzzzzz'"):
        PPOConfig.from_dict({"zzzzzzzz": 1})


def test_ppo_fields_are_unknown_to_the_base_config():
    with pytest.raises(ConfigError, match="unknown key 'clip_param'"):
        AlgorithmConfig.from_dict({"clip_param": 0.1})


# --- coercion of YAML / CLI strings -------------------------------------------------------


def test_strings_are_coerced_to_field_types():
    cfg = PPOConfig.from_dict(
        {
            "lr": "1e-3",
            "gamma": "0.9",
            "num_epochs": "4",
            "normalize_obs": "true",
            "normalize_advantages": "False",
            "hidden_sizes": [32, "16"],
            "vf_clip_param": "10",
        }
    )
    assert cfg.lr == 1e-3 and type(cfg.lr) is float
    assert cfg.gamma == 0.9 and type(cfg.gamma) is float
    assert cfg.num_epochs == 4 and type(cfg.num_epochs) is int
    assert cfg.normalize_obs is True
    assert cfg.normalize_advantages is False
    assert cfg.hidden_sizes == (32, 16) and type(cfg.hidden_sizes) is tuple
    assert cfg.vf_clip_param == 10.0 and type(cfg.vf_clip_param) is float


def test_ints_are_accepted_for_float_fields_and_none_for_optional_ones():
    cfg = PPOConfig.from_dict({"lr": 1, "vf_clip_param": None, "grad_clip": None})
    assert cfg.lr == 1.0 and type(cfg.lr) is float
    assert cfg.vf_clip_param is None and cfg.grad_clip is None


def test_from_yaml_reads_exponent_floats_that_yaml_leaves_as_strings(tmp_path):
    # YAML 1.1 reads `1e-3` (no dot) as a string; the config must still get a float.
    path = tmp_path / "ppo.yaml"
    path.write_text("env: CartPole-v1\nlr: 1e-3\nnormalize_obs: yes\nhidden_sizes: [32, 32]\n")
    cfg = PPOConfig.from_yaml(str(path))
    assert cfg.env == "CartPole-v1"
    assert cfg.lr == 1e-3 and type(cfg.lr) is float
    assert cfg.normalize_obs is True
    assert cfg.hidden_sizes == (32, 32)


@pytest.mark.parametrize(
    "key, value", [("lr", "fast"), ("num_epochs", "ten"), ("normalize_obs", "maybe"), ("activation", 3)]
)
def test_uncoercible_values_name_the_key_and_the_value(key, value):
    with pytest.raises(ConfigError) as err:
        PPOConfig.from_dict({key: value})
    assert repr(key) in str(err.value)
    assert repr(value) in str(err.value)


def test_fractional_value_for_an_int_field_is_rejected():
    # 2.5 epochs would pass `> 0` and only fail later inside range().
    with pytest.raises(ConfigError, match="num_epochs"):
        PPOConfig.from_dict({"num_epochs": 2.5})


def test_updated_returns_a_validated_copy():
    base = PPOConfig()
    new = base.updated({"lr": "5e-4"})
    assert new.lr == 5e-4
    assert base.lr == 3e-4
    with pytest.raises(ConfigError):
        base.updated({"gamma": 2})


# --- validation ---------------------------------------------------------------------------


def test_gamma_out_of_range_quotes_the_number():
    with pytest.raises(ConfigError, match=r"gamma .*1\.5"):
        PPOConfig(gamma=1.5)
    with pytest.raises(ConfigError, match=r"gamma .*1\.5"):
        PPOConfig.from_dict({"gamma": "1.5"})


@pytest.mark.parametrize(
    "key, value",
    [
        ("num_envs_per_runner", 0),
        ("rollout_fragment_length", -1),
        ("num_env_runners", -1),
        ("lr", -0.1),
        ("gae_lambda", 1.2),
        ("clip_param", 0.0),
        ("num_epochs", 0),
        ("minibatch_size", 0),
    ],
)
def test_invalid_values_are_rejected_quoting_the_value(key, value):
    with pytest.raises(ConfigError) as err:
        PPOConfig(**{key: value})
    assert key in str(err.value)
    assert str(value) in str(err.value)


def test_invalid_choices_are_rejected():
    with pytest.raises(ConfigError, match="'gelu'"):
        PPOConfig(activation="gelu")
    with pytest.raises(ConfigError, match="'threads'"):
        PPOConfig(vectorize_mode="threads")


def test_minibatch_larger_than_train_batch_quotes_both_numbers():
    # the batch is left to the spaces until they choose it: PPO on discrete tasks gets
    # max(1, 0 runners) * 8 envs * 128 steps = 1024
    assert PPOConfig().train_batch_size is None
    assert PPOConfig().with_family_defaults("discrete")[0].train_batch_size == 1024
    with pytest.raises(ConfigError) as err:
        PPOConfig(minibatch_size=2048).with_family_defaults("discrete")
    assert "2048" in str(err.value) and "1024" in str(err.value)
    with pytest.raises(ConfigError, match="512.*256"):
        PPOConfig(minibatch_size=512, num_envs_per_runner=8, rollout_fragment_length=32)


def test_train_batch_counts_every_runner():
    cfg = PPOConfig(num_env_runners=3, num_envs_per_runner=4, rollout_fragment_length=16, minibatch_size=192)
    assert cfg.train_batch_size == 192
    with pytest.raises(ConfigError, match="193.*192"):
        cfg.updated({"minibatch_size": 193})


def test_valid_lr_schedule_is_accepted():
    cfg = PPOConfig(lr_schedule=[[0, 1e-3], [1000, 1e-4], [5000, 0.0]])
    assert [list(p) for p in cfg.lr_schedule] == [[0, 1e-3], [1000, 1e-4], [5000, 0.0]]


@pytest.mark.parametrize(
    "schedule",
    [
        [],
        [[0, 1e-3], [0, 1e-4]],  # steps must rise
        [[100, 1e-3], [50, 1e-4]],
        [[0, 1e-3, 7]],  # not a pair
        [[0]],
    ],
)
def test_malformed_lr_schedule_is_rejected_quoting_it(schedule):
    with pytest.raises(ConfigError, match="lr_schedule") as err:
        PPOConfig(lr_schedule=schedule)
    assert str(schedule) in str(err.value)


def test_lr_schedule_with_a_negative_lr_is_rejected():
    # The same bound as `lr` itself: a schedule may not go below 0.
    with pytest.raises(ConfigError, match="lr_schedule"):
        PPOConfig(lr_schedule=[[0, 1e-3], [1000, -1e-4]])


def test_lr_schedule_from_yaml_gets_numbers(tmp_path):
    # Written as people write it; YAML hands `1e-3` and `1e-5` over as strings.
    path = tmp_path / "ppo.yaml"
    path.write_text("lr_schedule: [[0, 1e-3], [1000000, 1e-5]]\n")
    cfg = PPOConfig.from_yaml(str(path))
    assert [list(p) for p in cfg.lr_schedule] == [[0, 1e-3], [1_000_000, 1e-5]]
    assert all(type(v) is float for _, v in cfg.lr_schedule)
    assert piecewise_linear(cfg.lr_schedule, 500_000) == pytest.approx(0.000505)


def test_lr_schedule_steps_may_be_written_in_exponent_notation(tmp_path):
    # Env-step counts are written 1e6 in YAML, which reads them as the string '1e6'.
    path = tmp_path / "ppo.yaml"
    path.write_text("lr_schedule: [[0, 1.0e-3], [1e6, 0.0]]\n")
    cfg = PPOConfig.from_yaml(str(path))
    assert [list(p) for p in cfg.lr_schedule] == [[0, 1e-3], [1_000_000, 0.0]]


def test_lr_schedule_is_the_same_whether_built_in_python_or_from_a_dict():
    direct = PPOConfig(lr_schedule=[[0, 1e-3], [1000, 1e-4]])
    loaded = PPOConfig.from_dict({"lr_schedule": [[0, "1e-3"], [1000, "1e-4"]]})
    assert direct == loaded


# --- round trip ---------------------------------------------------------------------------


def test_to_dict_round_trips_through_from_dict():
    cfg = PPOConfig(
        env="CartPole-v1",
        env_config={"max_episode_steps": 50},
        hidden_sizes=(32, 16),
        lr=1e-3,
        lr_schedule=[[0, 1e-3], [1000, 1e-4]],
        vf_clip_param=0.2,
        normalize_obs=True,
        num_epochs=3,
    )
    d = cfg.to_dict()
    assert d["hidden_sizes"] == [32, 16]  # plain YAML-able values
    assert "algo_name" not in d
    assert PPOConfig.from_dict(d) == cfg


def test_to_dict_round_trips_through_yaml(tmp_path):
    cfg = PPOConfig(
        env="Pendulum-v1", lr=2.5e-4, gamma=0.95, hidden_sizes=(8,), grad_clip=None,
        lr_schedule=[[0, 2.5e-4], [20_000, 1e-5]],
    )
    path = tmp_path / "cfg.yaml"
    path.write_text(yaml.safe_dump(cfg.to_dict()))
    assert PPOConfig.from_yaml(str(path)) == cfg


def test_to_dict_keeps_an_env_class_by_name():
    from rlfleet.envs.testing import CorridorEnv

    assert PPOConfig(env=CorridorEnv).to_dict()["env"] == "CorridorEnv"


# --- piecewise_linear ---------------------------------------------------------------------


def test_piecewise_linear_at_and_between_points():
    sched = [[0, 1.0], [100, 0.5], [300, 0.1]]
    assert piecewise_linear(sched, 0) == 1.0
    assert piecewise_linear(sched, 50) == pytest.approx(0.75)
    assert piecewise_linear(sched, 100) == pytest.approx(0.5)
    assert piecewise_linear(sched, 150) == pytest.approx(0.4)  # .5 + (.1 - .5) * 50/200
    assert piecewise_linear(sched, 300) == pytest.approx(0.1)
    assert type(piecewise_linear(sched, 150)) is float


def test_piecewise_linear_holds_the_end_values_outside_the_range():
    sched = [[10, 2.0], [20, 4.0]]
    assert piecewise_linear(sched, 0) == 2.0
    assert piecewise_linear(sched, -5) == 2.0
    assert piecewise_linear(sched, 15) == pytest.approx(3.0)
    assert piecewise_linear(sched, 10_000) == 4.0


def test_piecewise_linear_single_point_is_constant():
    assert piecewise_linear([[0, 3e-4]], 0) == 3e-4
    assert piecewise_linear([[0, 3e-4]], 10**6) == 3e-4


def test_layers_merge_in_order_and_each_key_names_its_layer():
    config = PPOConfig.layered([("example.yaml", {"gamma": 0.9, "lr": 1e-3, "num_epochs": 4}),
                                ("command line", {"seed": 7}), ("--set", {"gamma": 0.95})])
    assert (config.gamma, config.lr, config.num_epochs, config.seed) == (0.95, 1e-3, 4, 7)
    assert [config.source_of(k) for k in ("gamma", "lr", "seed", "vf_coef")] == [
        "--set", "example.yaml", "command line", "default"]


def test_lr_over_an_earlier_schedule_scales_the_whole_schedule():
    # The one lr/lr_schedule rule: 2e-3 -> 0 over 100k, given lr 5e-4 in a later layer,
    # becomes 5e-4 -> 0 (every point times 5e-4 / 2e-3 = 0.25), and says which layer did it.
    config = PPOConfig.layered([("example.yaml", {"lr_schedule": [[0, 2e-3], [50_000, 1e-3], [100_000, 0.0]]}),
                                ("--set", {"lr": "5e-4"})])
    assert config.lr_schedule == [[0, 5e-4], [50_000, 2.5e-4], [100_000, 0.0]]
    assert config.source_of("lr_schedule") == "--set (lr scales the schedule)"
    # lr and a schedule in the same layer, or no schedule at all: taken as given
    same = PPOConfig.layered([("x", {"lr": 5e-4, "lr_schedule": [[0, 2e-3], [10, 0.0]]})])
    assert same.lr_schedule == [[0, 2e-3], [10, 0.0]] and same.source_of("lr_schedule") == "x"
    assert PPOConfig.layered([("x", {"lr": 5e-4})]).lr_schedule is None
    with pytest.raises(ConfigError, match=r"^--set: lr=0.001: the lr_schedule starts at 0"):
        PPOConfig.layered([("x", {"lr_schedule": [[0, 0.0], [10, 1e-3]]}), ("--set", {"lr": 1e-3})])
    with pytest.raises(ConfigError, match=r"^--set: config key 'lr': cannot use 'fast' as float"):
        PPOConfig.layered([("x", {"lr_schedule": [[0, 1e-3], [10, 0.0]]}), ("--set", {"lr": "fast"})])
    # the family defaults fill fields no layer set: they come first, and scale nothing
    from rlfleet.algorithms.impala import IMPALAConfig

    impala, picked = IMPALAConfig.layered([("x", {"lr_schedule": [[0, 2e-3], [10, 0.0]]})]).with_family_defaults("discrete")
    assert picked["lr"] == 1e-3 and impala.lr_schedule == [[0, 2e-3], [10, 0.0]]

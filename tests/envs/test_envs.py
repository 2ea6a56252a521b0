import math
import pickle
import warnings

import cloudpickle
import gymnasium as gym
import numpy as np
import pytest

from rlfleet import envs
from rlfleet.envs import checks, registry
from rlfleet.envs.checks import ContractCheckWrapper, EnvContractError, check_observations, check_rewards
from rlfleet.envs.registry import EnvCreator, EnvNotFoundError, make_env_creator, register_env
from rlfleet.envs.testing import CorridorEnv, OutOfSpaceEnv
from tests.extras import require_extra

GYM_TEST_ID = "RlfleetTestCorridor-v0"


@pytest.fixture
def gym_registered_id():
    gym.register(id=GYM_TEST_ID, entry_point="rlfleet.envs.testing:CorridorEnv", kwargs={"length": 9})
    yield GYM_TEST_ID
    gym.registry.pop(GYM_TEST_ID, None)


@pytest.fixture
def clean_registry(monkeypatch):
    """register_env writes to a module-level dict; give each test its own."""
    monkeypatch.setattr(registry, "_REGISTRY", dict(registry._REGISTRY))


class NaNRewardEnv(CorridorEnv):
    def step(self, action):
        obs, _, terminated, truncated, info = super().step(action)
        return obs, float("nan"), terminated, truncated, info


# --- make_env_creator --------------------------------------------------------------------------


def test_creator_for_a_gymnasium_id_passes_env_config_to_make():
    creator = make_env_creator("CartPole-v1", {"max_episode_steps": 7})
    assert isinstance(creator, EnvCreator)
    assert creator.name == "CartPole-v1"
    env = creator()
    assert env.spec.id == "CartPole-v1"
    assert env.spec.max_episode_steps == 7
    env.reset(seed=0)
    steps = 0
    truncated = terminated = False
    while not (terminated or truncated):
        _, _, terminated, truncated, _ = env.step(0 if steps % 2 else 1)
        steps += 1
    assert steps <= 7


def test_creator_for_an_id_registered_with_gymnasium(gym_registered_id):
    assert make_env_creator(gym_registered_id)().unwrapped.length == 9
    env = make_env_creator(gym_registered_id, {"length": 3})()
    assert isinstance(env.unwrapped, CorridorEnv)
    assert env.unwrapped.length == 3


def test_creator_for_an_env_class_passes_env_config_as_kwargs():
    creator = make_env_creator(CorridorEnv, {"length": 2, "max_steps": 4})
    assert creator.name == "CorridorEnv"
    env = creator()
    assert isinstance(env, CorridorEnv)
    assert (env.length, env.max_steps) == (2, 4)
    env.reset(seed=0)
    _, reward, terminated, _, _ = env.step(1)
    _, reward, terminated, _, _ = env.step(1)
    assert terminated and reward == 1.0  # two steps right reach the end of a length-2 corridor


def test_creator_for_a_callable_gets_the_env_config_dict():
    seen = []

    def make(env_config):
        seen.append(env_config)
        return CorridorEnv(length=env_config["n"])

    env = make_env_creator(make, {"n": 6})()
    assert env.length == 6
    assert seen == [{"n": 6}]


def test_creator_copies_env_config():
    cfg = {"length": 2}
    creator = make_env_creator(CorridorEnv, cfg)
    cfg["length"] = 99
    assert creator().length == 2


def test_register_env_makes_a_name_usable(clean_registry):
    register_env("corridor-test", lambda cfg: CorridorEnv(**cfg))
    names = envs.registered_envs()
    assert names.index("corridor-test") < names.index("CartPole-v1")  # ours first, then gymnasium's
    creator = make_env_creator("corridor-test", {"length": 4})
    assert creator.name == "corridor-test"
    env = creator()
    assert isinstance(env, CorridorEnv) and env.length == 4


def test_register_env_takes_precedence_over_gymnasium(clean_registry):
    register_env("CartPole-v1", lambda cfg: CorridorEnv())
    assert isinstance(make_env_creator("CartPole-v1")(), CorridorEnv)


@pytest.mark.parametrize("typo", ["CartPole-v2", "CartPol-v1", "cartpole-v1"])
def test_unknown_id_names_the_closest_known_id(typo):
    with pytest.raises(EnvNotFoundError) as err:
        make_env_creator(typo)
    msg = str(err.value)
    assert repr(typo) in msg
    assert "did you mean 'CartPole-v1'" in msg


def test_unknown_registered_name_is_suggested(clean_registry):
    register_env("my-warehouse-sim", lambda cfg: CorridorEnv())
    with pytest.raises(EnvNotFoundError, match="did you mean 'my-warehouse-sim'"):
        make_env_creator("my-warehouse-sm")


@pytest.mark.parametrize(
    "bad, text", [(None, "no env given"), (42, "int"), (dict, "dict is not a gymnasium.Env subclass")]
)
def test_things_that_are_not_envs_are_refused(bad, text):
    with pytest.raises(EnvNotFoundError, match=text):
        make_env_creator(bad)


# --- pickling (creators travel to remote actors) -------------------------------------------


@pytest.mark.parametrize("dumps", [pickle.dumps, cloudpickle.dumps], ids=["pickle", "cloudpickle"])
@pytest.mark.parametrize(
    "env, env_config, check",
    [
        ("CartPole-v1", {"max_episode_steps": 11}, lambda e: e.spec.max_episode_steps == 11),
        (CorridorEnv, {"length": 3}, lambda e: e.length == 3),
    ],
    ids=["gym_id", "env_class"],
)
def test_creator_survives_pickling(dumps, env, env_config, check):
    creator = pickle.loads(dumps(make_env_creator(env, env_config)))
    assert creator.name == make_env_creator(env).name
    assert check(creator())


def test_creator_of_a_closure_survives_cloudpickle():
    length = 5
    creator = make_env_creator(lambda cfg: CorridorEnv(length=length + cfg["extra"]), {"extra": 2})
    restored = pickle.loads(cloudpickle.dumps(creator))
    assert restored().length == 7


def test_creator_of_a_registered_name_survives_pickling(clean_registry):
    # Remote actors (Ray) and async vector envs ship creators with cloudpickle; the creator
    # carries the registered function, so it works where register_env never ran.
    import cloudpickle

    from rlfleet.envs import registry

    register_env("corridor-pickle", lambda cfg: CorridorEnv(**cfg))
    payload = cloudpickle.dumps(make_env_creator("corridor-pickle", {"length": 8}))
    registry._REGISTRY.pop("corridor-pickle")  # as in a fresh worker process
    assert pickle.loads(payload)().length == 8


# --- ContractCheckWrapper --------------------------------------------------------------------


def test_contract_wrapper_passes_a_well_behaved_env_unchanged():
    inner = gym.make("CartPole-v1")
    env = ContractCheckWrapper(gym.make("CartPole-v1"), "CartPole-v1")
    obs, _ = env.reset(seed=3)
    ref_obs, _ = inner.reset(seed=3)
    np.testing.assert_array_equal(obs, ref_obs)
    for t in range(30):
        out = env.step(t % 2)
        ref = inner.step(t % 2)
        np.testing.assert_array_equal(out[0], ref[0])
        assert out[1:4] == ref[1:4]
        if out[2] or out[3]:
            break


def test_out_of_space_observation_at_reset_raises_naming_env_and_value():
    class BadReset(CorridorEnv):
        def reset(self, *, seed=None, options=None):
            super().reset(seed=seed)
            return np.array([-np.inf], np.float32), {}

    env = ContractCheckWrapper(BadReset(), "bad-reset")
    with pytest.raises(EnvContractError, match=r"'bad-reset'.*reset\(\).*-inf"):
        env.reset()


class BeyondBoundsEnv(CorridorEnv):
    """Like gymnasium's LunarLander-v3: a finite float a little past the Box's bound."""

    def reset(self, *, seed=None, options=None):
        super().reset(seed=seed)
        return np.array([-0.25], np.float32), {}

    def step(self, action):
        obs, reward, terminated, truncated, info = super().step(action)
        return np.array([1.0011], np.float32), reward, terminated, truncated, info


def test_a_finite_float_beyond_the_bounds_warns_once_per_env_and_is_used(monkeypatch):
    monkeypatch.setattr(checks, "_WARNED", set())
    env = ContractCheckWrapper(BeyondBoundsEnv(), "beyond")
    with pytest.warns(RuntimeWarning, match=r"^env 'beyond' returned an observation beyond its observation_space's "
                                            r"float bounds from reset\(\): \[-0\.25\]"):
        obs, _ = env.reset()
    assert obs[0] == np.float32(-0.25)
    venv = vector_of([BeyondBoundsEnv, BeyondBoundsEnv])
    obs, _ = venv.reset(seed=0)
    obs, *_ = venv.step(np.array([1, 1]))
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # once per env: 'beyond' has had its warning
        check_observations(obs, venv.observation_space, venv.single_observation_space, "beyond")
    with pytest.warns(RuntimeWarning, match=r"'other' \(sub-env 0\).*\[1\.0011\]"):
        check_observations(obs, venv.observation_space, venv.single_observation_space, "other")
    # and so does the runner's own vector env: a run trains on through it
    from rlfleet.algorithms.ppo import PPOConfig

    with pytest.warns(RuntimeWarning, match="'BeyondBoundsEnv' \\(sub-env 0\\).*float bounds from reset"):
        algo = PPOConfig(env=BeyondBoundsEnv, num_envs_per_runner=2, rollout_fragment_length=8,
                         minibatch_size=16).build()
    try:
        assert algo.train()["env_steps"] == 16
    finally:
        algo.stop()
    # a NaN in a later sub-env is refused even after an earlier one only warned
    mixed = np.array([[1.5], [np.nan]], np.float32)
    box = gym.spaces.Box(0.0, 1.0, (1,), np.float32)
    with pytest.raises(EnvContractError, match=r"'late-nan' \(sub-env 1\)"):
        with pytest.warns(RuntimeWarning, match=r"'late-nan' \(sub-env 0\)"):
            check_observations(mixed, gym.vector.utils.batch_space(box, 2), box, "late-nan")
    # an integer out of range is still refused: no encoder can take it
    single = gym.spaces.Dict({"pos": gym.spaces.Box(-1.0, 1.0, (2,), np.float32), "mode": gym.spaces.Discrete(3)})
    bad = {"pos": np.full((1, 2), 3.0, np.float32), "mode": np.array([5])}
    with pytest.raises(EnvContractError, match="outside its observation_space"):
        check_observations(bad, gym.vector.utils.batch_space(single, 1), single, "mixed")


def vector_of(env_fns):
    return gym.vector.SyncVectorEnv(env_fns, autoreset_mode=gym.vector.AutoresetMode.SAME_STEP)


def test_check_observations_names_env_sub_env_and_value_for_out_of_space_env():
    # Sub-env 1 leaves its Box(0, 1) after 2 steps; sub-env 0 only after 100.
    venv = vector_of([lambda: OutOfSpaceEnv(bad_step=100), lambda: OutOfSpaceEnv(bad_step=2)])
    obs, _ = venv.reset(seed=0)
    obs, *_ = venv.step(np.array([1, 1]))
    check_observations(obs, venv.observation_space, venv.single_observation_space, "oos-sim")  # still fine
    obs, *_ = venv.step(np.array([1, 1]))
    with pytest.raises(EnvContractError) as err:
        check_observations(obs, venv.observation_space, venv.single_observation_space, "oos-sim")
    msg = str(err.value)
    assert "'oos-sim'" in msg
    assert "sub-env 1" in msg
    assert "inf" in msg
    assert "observation_space" in msg


def test_check_observations_on_a_nested_space():
    single = gym.spaces.Dict({"pos": gym.spaces.Box(-1.0, 1.0, (2,), np.float32), "mode": gym.spaces.Discrete(3)})
    batch = gym.vector.utils.batch_space(single, 3)
    good = {"pos": np.zeros((3, 2), np.float32), "mode": np.array([0, 1, 2])}
    check_observations(good, batch, single, "nested")
    bad = {"pos": np.zeros((3, 2), np.float32), "mode": np.array([0, 5, 2])}
    with pytest.raises(EnvContractError, match=r"'nested' \(sub-env 1\)"):
        check_observations(bad, batch, single, "nested")


@pytest.mark.parametrize("bad", [float("nan"), math.inf, -math.inf])
def test_check_rewards_names_env_sub_env_and_value(bad):
    check_rewards(np.array([0.0, 1.0, -2.0]), "ok-sim")
    with pytest.raises(EnvContractError) as err:
        check_rewards(np.array([0.0, 1.0, bad]), "nan-sim")
    msg = str(err.value)
    assert "'nan-sim'" in msg and "sub-env 2" in msg
    assert ("nan" if math.isnan(bad) else "inf") in msg


def test_nan_reward_from_a_vector_env_is_caught():
    venv = vector_of([CorridorEnv, NaNRewardEnv])
    venv.reset(seed=0)
    _, rewards, *_ = venv.step(np.array([0, 0]))
    with pytest.raises(EnvContractError, match=r"'nan-sim' \(sub-env 1\).*nan"):
        check_rewards(rewards, "nan-sim")


def runner_for(env_cls, name):
    from rlfleet.rl.runners.env_runner import EnvRunner
    from rlfleet.rl.models.module import ModuleSpec

    probe = env_cls()
    return EnvRunner(
        env_creator=make_env_creator(env_cls),
        env_name=name,
        module_spec=ModuleSpec(probe.observation_space, probe.action_space, hidden_sizes=(8,)),
        num_envs=2,
        fragment_length=5,
        seed=0,
    )


def test_env_runner_refuses_an_out_of_space_observation_naming_env_and_value():
    # Whatever layer does the check, a runner stepping a broken simulator must say so.
    runner = runner_for(OutOfSpaceEnv, "oos-sim")  # leaves its Box at step 3
    with pytest.raises(EnvContractError) as err:
        runner.sample()
    assert "'oos-sim'" in str(err.value) and "inf" in str(err.value)


def test_env_runner_refuses_a_nan_reward_naming_env():
    runner = runner_for(NaNRewardEnv, "nan-sim")
    with pytest.raises(EnvContractError) as err:
        runner.sample()
    assert "'nan-sim'" in str(err.value) and "nan" in str(err.value)


def test_old_four_tuple_step_api_raises():
    class OldApi(CorridorEnv):
        def step(self, action):
            obs, reward, te, tr, info = super().step(action)
            return obs, reward, te or tr, info

    env = ContractCheckWrapper(OldApi(), "old-api")
    env.reset(seed=0)
    with pytest.raises(EnvContractError, match=r"'old-api'.*4 values"):
        env.step(0)


def test_mujoco_warnings_go_through_python_warnings_and_write_no_log(tmp_path, monkeypatch):
    require_extra("mujoco", "mujoco")
    import warnings

    from rlfleet.envs.registry import make_env_creator

    monkeypatch.chdir(tmp_path)
    creator = make_env_creator("HalfCheetah-v5")
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("default")  # once per location, as a user sees them
        for _ in range(3):
            creator().close()
    assert not (tmp_path / "MUJOCO_LOG.TXT").exists()
    assert len([w for w in caught if str(w.message).startswith("MuJoCo: ")]) <= 1


# --- envs registered on request, text leaves (issue 31) ---------------------------------------


def test_import_module_function_calls_the_function_once(tmp_path, monkeypatch):
    (tmp_path / "late_envs.py").write_text(
        "CALLS = []\n"
        "def register_envs():\n"
        "    import gymnasium as gym\n"
        "    CALLS.append(1)\n"
        "    gym.register(id='rlfleet-test/Late-v0', entry_point='rlfleet.envs.testing:CorridorEnv')\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.setattr(registry, "_CALLED", set())
    try:
        module = envs.import_user_module("late_envs:register_envs")
        envs.import_user_module("late_envs:register_envs")  # the driver imports the user's modules twice
        assert module.CALLS == [1]
        assert "rlfleet-test/Late-v0" in gym.registry
    finally:
        gym.registry.pop("rlfleet-test/Late-v0", None)


def test_import_module_with_a_missing_function_is_one_line(tmp_path, monkeypatch):
    (tmp_path / "no_register.py").write_text("X = 1\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    with pytest.raises(envs.UserModuleError, match=r"^--import 'no_register:register_envs': no_register has no "
                                                   r"function 'register_envs'$"):
        envs.import_user_module("no_register:register_envs")


def test_creator_of_an_id_registered_only_here_builds_it_from_the_spec(gym_registered_id):
    """A remote runner's process never ran the registration (MinAtar registers on request):
    the creator carries the gymnasium spec along."""
    creator = pickle.loads(pickle.dumps(make_env_creator(gym_registered_id)))
    gym.registry.pop(gym_registered_id)  # as in a process that never registered it
    assert creator().unwrapped.length == 9


class _Mission(gym.Space):
    """A Space[str] of its own, as MiniGrid's MissionSpace is (not a spaces.Text)."""

    def __init__(self):
        super().__init__(dtype=str)

    def sample(self, mask=None, probability=None):
        return "get to the green goal square"

    def contains(self, x):
        return isinstance(x, str)


class MissionEnv(gym.Env):
    def __init__(self, text_space="mission"):
        text = _Mission() if text_space == "mission" else gym.spaces.Text(40)
        self.observation_space = gym.spaces.Dict({"image": gym.spaces.Box(0, 255, (7, 7, 3), np.uint8),
                                                  "direction": gym.spaces.Discrete(4), "mission": text})
        self.action_space = gym.spaces.Discrete(3)

    def reset(self, *, seed=None, options=None):
        super().reset(seed=seed)
        return {"image": np.zeros((7, 7, 3), np.uint8), "direction": 1, "mission": "get to the goal"}, {}

    def step(self, action):
        return self.reset()[0], 1.0, True, False, {}


@pytest.mark.parametrize("text_space", ["mission", "text"])
def test_text_leaves_of_a_dict_observation_are_dropped_by_the_creator(gym_registered_id, text_space):
    gym.register(id="rlfleet-test/Mission-v0", entry_point=MissionEnv, kwargs={"text_space": text_space})
    try:
        env = make_env_creator("rlfleet-test/Mission-v0")()
        assert list(env.observation_space.spaces) == ["direction", "image"]
        obs, _ = env.reset(seed=0)
        assert set(obs) == {"direction", "image"} and obs["direction"] == 1
    finally:
        gym.registry.pop("rlfleet-test/Mission-v0", None)
    # a Dict without text is left as it was
    assert type(make_env_creator(gym_registered_id)()) is type(gym.make(gym_registered_id, disable_env_checker=True))

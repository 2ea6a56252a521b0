"""Simulators: the registry that turns a user's ``env`` into a creator, contract checks,
and small test environments. Imports nothing else of ours."""

from rlfleet.envs.atari import make_atari, register_atari_envs
from rlfleet.envs.checks import ContractCheckWrapper, EnvContractError, check_observations, check_rewards
from rlfleet.envs.recovery import EnvFailedError, RecreateOnError
from rlfleet.envs.registry import (
    EnvConfigError,
    EnvCreator,
    EnvNotFoundError,
    UserModuleError,
    import_user_module,
    make_env_creator,
    probe_env,
    register_env,
    registered_envs,
)

# The test envs are usable by name everywhere, the command line included
# (`--env rlfleet/Flaky-v0 --set env_config={fail_every: 50}`).
def _register_test_envs() -> None:
    import functools

    from rlfleet.envs.testing import TEST_ENVS, make_test_env

    for name in TEST_ENVS:
        register_env(name, functools.partial(make_test_env, name))


_register_test_envs()

__all__ = [
    "ContractCheckWrapper",
    "EnvConfigError",
    "EnvContractError",
    "EnvCreator",
    "EnvFailedError",
    "EnvNotFoundError",
    "UserModuleError",
    "import_user_module",
    "RecreateOnError",
    "check_observations",
    "check_rewards",
    "make_atari",
    "make_env_creator",
    "probe_env",
    "register_atari_envs",
    "register_env",
    "registered_envs",
]

"""Simulators: the registry that turns a user's ``env`` into a creator, contract checks,
and small test environments. Imports nothing else of ours."""

from envs.checks import ContractCheckWrapper, EnvContractError, check_observations, check_rewards
from envs.recovery import EnvFailedError, RecreateOnError
from envs.registry import EnvCreator, EnvNotFoundError, make_env_creator, register_env, registered_envs

__all__ = [
    "ContractCheckWrapper",
    "EnvContractError",
    "EnvCreator",
    "EnvFailedError",
    "EnvNotFoundError",
    "RecreateOnError",
    "check_observations",
    "check_rewards",
    "make_env_creator",
    "register_env",
    "registered_envs",
]

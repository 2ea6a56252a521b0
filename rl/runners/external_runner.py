"""An env runner whose envs are simulators that own their loop and connect over the
network (envs/external/PROTOCOL.md): it listens on ``port + index``, acts for every
connected simulator in batched forward passes (server-side inference), and turns their
steps into fragments with the layout of :class:`rlfleet.rl.runners.env_runner.EnvRunner`'s, so
PPO, IMPALA and DQN train from them unchanged.

``env: external`` with ``env_config``:
    observation_space, action_space   the spaces, as schemas (rl/spaces.space_to_schema), or
    spaces_from                       a gymnasium id whose spaces to use (CartPole-v1)
    (neither)                         the first simulator's hello declares them (within
                                      spaces_timeout_s, 300 s); later ones must match
    host (127.0.0.1), port (9900), token (required for a non-loopback host)
A fragment is ``num_envs_per_runner`` columns of ``rollout_fragment_length`` steps, each
column a run of steps of one connection (several columns may come from one busy client).
"""

from __future__ import annotations

import os
import threading
import time
import warnings
from typing import Any, Callable

import gymnasium as gym
import numpy as np
import torch
import tree

from rlfleet.envs.checks import describe
from rlfleet.envs.external.protocol import ProtocolError
from rlfleet.envs.external.server import LOOPBACK, ExternalServer, await_declared_spaces
from rlfleet.rl.batch import step_columns
from rlfleet.rl.config import ConfigError, closest
from rlfleet.rl.core import VALUES, Fragment, has_capability
from rlfleet.rl.runners.env_runner import ControlRunnerFactory
from rlfleet.rl.models.module import ModuleSpec
from rlfleet.envs.schema import space_from_schema, space_to_schema
from rlfleet.rl.spaces import actions_to_env, check_spaces

EXTERNAL_ENV = "external"
ENV_CONFIG_KEYS = ("observation_space", "action_space", "spaces_from", "spaces_timeout_s", "host", "port", "token",
                   "hello_timeout_s", "max_lag")


class ExternalConfigError(ValueError):
    """``env: external`` with unusable spaces, unknown env_config keys, a non-loopback
    host without a token, or a port that is taken."""


class ExternalTimeoutError(RuntimeError):
    """The connected simulators gave too few steps within ``sample_timeout_s``."""


def external_spaces(env_config: dict[str, Any]) -> tuple[gym.Space, gym.Space]:
    unknown = sorted(set(env_config) - set(ENV_CONFIG_KEYS))
    if unknown:
        raise ExternalConfigError(f"env 'external' does not take env_config key {unknown[0]!r}"
                                  f"{closest(unknown[0], ENV_CONFIG_KEYS)} (its keys: {', '.join(ENV_CONFIG_KEYS)})")
    host = env_config.get("host", "127.0.0.1")
    if host not in LOOPBACK and not (env_config.get("token") or os.environ.get("RLFLEET_EXTERNAL_TOKEN")):
        raise ExternalConfigError(f"env 'external': host {host!r} is reachable from other machines; set env_config "
                                  "token (or RLFLEET_EXTERNAL_TOKEN)")
    max_lag = env_config.get("max_lag")
    if max_lag is not None and (not isinstance(max_lag, int) or isinstance(max_lag, bool) or max_lag < 0):
        raise ExternalConfigError(f"env 'external': max_lag {max_lag!r} must be a non-negative int (or null: no limit)")
    if "spaces_from" in env_config:
        env = gym.make(env_config["spaces_from"])
        spaces = env.observation_space, env.action_space
        env.close()
        return spaces
    declared = [key for key in ("observation_space", "action_space") if key in env_config]
    if len(declared) == 1:
        missing = ({"observation_space", "action_space"} - set(declared)).pop()
        raise ExternalConfigError(f"env 'external' has env_config {declared[0]} but no {missing}: give both, "
                                  "or neither to take them from the first simulator's hello")
    if not declared:
        return _spaces_from_hello(env_config, host)
    try:
        return space_from_schema(env_config["observation_space"]), space_from_schema(env_config["action_space"])
    except ValueError as e:
        raise ExternalConfigError(f"env 'external': {e}") from None


def _spaces_from_hello(env_config: dict[str, Any], host: str) -> tuple[gym.Space, gym.Space]:
    port, timeout_s = int(env_config.get("port", 9900)), float(env_config.get("spaces_timeout_s", 300.0))
    print(f"env 'external': waiting up to {timeout_s:g} s for a simulator's hello on {host}:{port} to declare "
          "the spaces", flush=True)

    def check(obs: dict, act: dict) -> str | None:
        try:
            spaces = space_from_schema(obs), space_from_schema(act)
        except ValueError as e:
            return f"hello: {e}"
        try:
            check_spaces(*spaces, EXTERNAL_ENV)
        except ValueError as e:
            return f"hello: {e}"
        return None

    try:
        obs, act = await_declared_spaces(
            host=host, port=port, token=env_config.get("token") or os.environ.get("RLFLEET_EXTERNAL_TOKEN"),
            timeout_s=timeout_s, check=check, hello_timeout_s=float(env_config.get("hello_timeout_s", 10.0)))
    except TimeoutError as e:  # before OSError, its base class
        raise ExternalTimeoutError(f"env 'external': {e}") from None
    except OSError as e:
        raise ExternalConfigError(f"env 'external': cannot listen on port {port}: {e.strerror}") from None
    spaces = space_from_schema(obs), space_from_schema(act)
    print(f"env 'external': spaces from the first hello: observations {spaces[0]}, actions {spaces[1]}", flush=True)
    return spaces


def _stack(items: list[Any]) -> Any:
    return tree.map_structure(lambda *xs: np.stack(xs), *items)


class ExternalEnvRunner:
    def __init__(self, *, module_spec: ModuleSpec, env_config: dict[str, Any], num_columns: int,
                 fragment_length: int, seed: int, index: int, sample_timeout_s: float, max_lag: int | None = 8) -> None:
        """``max_lag``: client-side reports more weights versions behind are dropped (None:
        none are; ``env_config.max_lag`` overrides it)."""
        self.index, self.num_columns, self.fragment_length = index, num_columns, fragment_length
        self.max_lag = env_config.get("max_lag", max_lag)
        self.sample_timeout_s = sample_timeout_s
        self.observation_space, self.action_space = module_spec.observation_space, module_spec.action_space
        self.module = module_spec.build()
        self.module.eval()
        self.state_size = getattr(self.module, "state_size", 0)  # with memory: carried per connection
        self.weights_lock = threading.Lock()
        self.weights_version = 0
        self.exported: tuple[int, bytes, dict] | None = None  # the policy as ONNX, per weights version
        torch.manual_seed(seed)
        schemas = space_to_schema(self.observation_space), space_to_schema(self.action_space)
        port = int(env_config.get("port", 9900)) + max(index, 0)
        try:
            self.server = self._listen(env_config, port, schemas, index)
        except OSError as e:
            raise ExternalConfigError(f"env 'external': cannot listen on port {port}: {e.strerror}") from None

    def _listen(self, env_config: dict[str, Any], port: int, schemas: tuple[dict, dict], index: int) -> ExternalServer:
        return ExternalServer(
            host=env_config.get("host", "127.0.0.1"), port=port,
            token=env_config.get("token") or os.environ.get("RLFLEET_EXTERNAL_TOKEN"),
            observation_space=schemas[0], action_space=schemas[1],
            spaces_equal=lambda theirs, ours: _same_space(theirs, ours),
            check_obs=self._check_obs, act=self._act,
            value=self._value if has_capability(self.module, VALUES) else None,
            hello_timeout_s=float(env_config.get("hello_timeout_s", 10.0)), label=f"external runner {index}",
            policy=self._sampling_policy, max_lag=self.max_lag, column_length=self.fragment_length,
            column_count=self.num_columns, memory=bool(self.state_size),
        )

    # -- called from the server's thread -------------------------------------------------------
    def _check_obs(self, obs: Any) -> str | None:
        try:
            ok = self.observation_space.contains(obs)
        except Exception:  # noqa: BLE001 - a structure the space cannot even compare
            ok = False
        return None if ok else f"{describe(obs)} is not in {self.observation_space}"

    def _states(self, memories: list[Any]) -> dict[str, torch.Tensor]:
        """The ``state`` argument of the acting entries for these connections' memories
        (zeros where an episode starts), or nothing for a policy without memory."""
        if not self.state_size:
            return {}
        zeros = np.zeros(self.state_size, np.float32)
        return {"state": torch.from_numpy(np.stack([zeros if m is None else m for m in memories]))}

    def _act(self, observations: list[Any], memories: list[Any]) -> tuple[list[Any], list[Any], list[dict], list[Any]]:
        batch = tree.map_structure(torch.from_numpy, _stack(observations))
        with self.weights_lock:
            out = self.module.forward_exploration(batch, **self._states(memories))
        leaves = [a.numpy() for a in out.pop("actions")]
        state = out.pop("state", None)
        env_actions = actions_to_env(leaves, self.action_space)
        extras = {k: v.numpy() for k, v in out.items()}
        n = len(observations)
        return ([tree.map_structure(lambda x, i=i: x[i], env_actions) for i in range(n)],
                [[leaf[i] for leaf in leaves] for i in range(n)],
                [{k: float(v[i]) for k, v in extras.items()} for i in range(n)],
                [None] * n if state is None else list(state.numpy()))

    def _sampling_policy(self) -> tuple[bytes, dict]:
        """The current weights as ONNX for client-side inference (cached per version)."""
        with self.weights_lock:
            if self.exported is None or self.exported[0] != self.weights_version:
                from rlfleet.rl.export import ExportError, sampling_policy_onnx  # torch.onnx: only when asked

                try:
                    model, contract = sampling_policy_onnx(self.module, self.observation_space, self.action_space)
                except ExportError as e:
                    raise ProtocolError(f"get_policy: {e} (use get_action)") from None
                self.exported = (self.weights_version, model, {**contract, "weights_version": self.weights_version})
            return self.exported[1], self.exported[2]

    def _value(self, observations: list[Any], memories: list[Any]) -> list[float]:
        with self.weights_lock:
            return self.module.compute_values(tree.map_structure(torch.from_numpy, _stack(observations)),
                                              **self._states(memories)).tolist()

    # -- the Runner interface -----------------------------------------------------------------
    def set_weights(self, weights: dict[str, np.ndarray], version: int, connector_state: Any = None) -> None:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", UserWarning)
            state = {k: torch.from_numpy(v) for k, v in weights.items()}
        with self.weights_lock:
            self.module.load_state_dict(state)
            self.weights_version = self.server.weights_version = version

    def sample(self) -> Fragment:
        """The next ``num_columns`` columns of ``fragment_length`` steps the connected
        simulators produced (waiting up to ``sample_timeout_s`` for them)."""
        started = time.perf_counter()
        T, B = self.fragment_length, self.num_columns
        taken = self.server.take_columns(T, B, self.sample_timeout_s)
        if taken is None:
            raise ExternalTimeoutError(f"external runner {self.index}: {self.server.num_clients} simulator(s) connected on "
                               f"port {self.server.address[1]} gave fewer than {B} x {T} steps within "
                               f"{self.sample_timeout_s:g} s")
        columns, bootstrap = taken
        for column, after in zip(columns, bootstrap):
            # A column is a run of one connection's steps, and the next fragment's column b
            # may come from another connection: each column stands alone. It starts a
            # stream, and a cut that is no episode end ends like a truncation, with the
            # observation after it (what GAE and V-trace bootstrap from anyway; what replay
            # needs, which otherwise takes the next fragment's column b as the next state).
            if not self.state_size:  # with memory, is_first keeps meaning an episode's start (its state zeroed)
                column[0].is_first = True
            last = column[-1]
            if not (last.terminated or last.truncated):
                last.truncated, last.final_obs = True, after  # next_value is V(after) already
        steps = [[column[t] for column in columns] for t in range(T)]  # (T, B)
        batch: dict[str, Any] = {**step_columns(steps),
                                 "bootstrap_obs": tree.map_structure(lambda x: x[None], _stack(bootstrap))}
        for key in steps[0][0].extras:
            batch[key] = np.array([[s.extras[key] for s in row] for row in steps], np.float32)
        if self.state_size:  # (T, B, S): the state each step was acted from, zeros at an episode's start
            zeros = np.zeros(self.state_size, np.float32)
            batch["state_in"] = np.array([[zeros if s.memory is None else s.memory for s in row] for row in steps],
                                         np.float32)
        if "values" in batch:
            batch["next_values"] = np.array([[s.next_value for s in row] for row in steps], np.float32)
        final_obs = [(t, b, s.final_obs) for t, row in enumerate(steps) for b, s in enumerate(row) if s.truncated]
        returns, lengths, dropped, stale, unused_steps = self.server.pop_episodes()
        version = min(s.weights_version for row in steps for s in row)  # the oldest weights that acted
        # env steps count every step the simulators took, those of a backlog dropped for
        # fresher data included: the simulators did that work.
        return Fragment(batch, returns, lengths, T * B + unused_steps, version, self.index, dropped, final_obs,
                        sample_time_s=time.perf_counter() - started, num_stale_episodes=stale)

    def evaluate(self, num_episodes: int) -> dict[str, float]:
        raise ExternalConfigError("env 'external' has no local env to evaluate in: serve a checkpoint "
                                 "(scripts/serve.py) and evaluate it with scripts/evaluate.py")

    def ping(self) -> bool:
        return True

    def stop(self) -> None:
        self.server.stop()


def _same_space(theirs: dict, ours: dict) -> bool:
    try:
        return space_from_schema(theirs) == space_from_schema(ours)
    except ValueError:
        return False


class ExternalRunnerFactory(ControlRunnerFactory):
    """``env: external``: simulators connect over the network; the spaces come from the
    config or from the first client's hello; runners are :class:`ExternalEnvRunner`s."""

    kind = "external"
    connectors = False
    memory = True  # carried per connection and episode, server-side inference only

    def __init__(self, config: Any, *, adapt_spec: Callable[[ModuleSpec], Any] = lambda spec: spec) -> None:
        super().__init__(config)
        if config.policy_snapshots:
            raise ConfigError(f"policy_snapshots is for multi-agent envs; {config.env!r} has one agent")
        observation_space, action_space = external_spaces(config.env_config)
        check_spaces(observation_space, action_space, EXTERNAL_ENV)
        self._pick_defaults(observation_space, action_space)
        self.module_spec = adapt_spec(self._module_spec(observation_space, action_space, EXTERNAL_ENV))

    def evaluation_runner(self, num_episodes: int) -> Any:
        raise ExternalConfigError("env 'external' has no local env to evaluate in: serve a checkpoint "
                                  "(scripts/serve.py) and evaluate it with scripts/evaluate.py")

    def _runner(self, index: int, num_envs: int, seed: int) -> ExternalEnvRunner:
        c = self.config
        return ExternalEnvRunner(module_spec=self.module_spec, env_config=c.env_config, num_columns=num_envs,
                                 fragment_length=c.rollout_fragment_length, seed=seed, index=index,
                                 sample_timeout_s=c.sample_timeout_s, max_lag=c.external_max_lag)

"""EnvRunner: steps a gymnasium vector env with a CPU copy of the policy.

Built from factories (an env creator and a module spec), so the same class runs in this
process and as a remote actor. Weights arrive by value here, after the runtime resolved
the object-store reference once per actor.

The default actor-critic acts in numpy (rl/models/numpy_policy.py), and this module imports
torch only for the modules that need it: a remote runner of the default policy never
loads torch (about 150 MiB and most of a second of start-up saved per runner).
"""

from __future__ import annotations

import time
from typing import Any, Callable

import gymnasium as gym
import numpy as np
import tree

from rlfleet.envs import ContractCheckWrapper, RecreateOnError, make_env_creator, probe_env
from rlfleet.envs.vector import AsyncVectorEnv, CheckedVectorEnv
from rlfleet.rl.callbacks import EpisodeHooks, load_callbacks
from rlfleet.rl.config import ConfigError, ControlConfig
from rlfleet.rl.connectors import MeanStdFilter
from rlfleet.envs import EnvContractError
from rlfleet.rl.core import ACTION_MASK, Fragment
from rlfleet.envs.multi_agent import is_multi_agent_name
from rlfleet.rl.models.spec import ModuleSpec
from rlfleet.rl.spaces import (actions_to_env, check_spaces, mask_segments, mask_space, rows_without_legal_action,
                              space_family)


class _SubEnvCreator:
    """Picklable ``() -> Env``: the user's env, recreated when it raises (up to ``retries``
    times in a row; 0 lets the first error through). In a subprocess (``async``) each
    sub-env also carries the contract checks; in process the vector env checks a batch at
    a time."""

    def __init__(self, creator: Callable[[], gym.Env], name: str, retries: int, max_failed_episodes: int,
                 checked: bool) -> None:
        self.creator, self.name, self.retries, self.max_failed_episodes = creator, name, retries, max_failed_episodes
        self.checks = checked

    def checked(self) -> gym.Env:
        return ContractCheckWrapper(self.creator(), self.name) if self.checks else self.creator()

    def __call__(self) -> gym.Env:
        if self.retries == 0:
            return self.checked()
        return RecreateOnError(self.checked, self.name, max_retries=self.retries,
                               max_failed_episodes=self.max_failed_episodes)


def _stack(items: list[Any]) -> Any:
    return tree.map_structure(lambda *xs: np.stack(xs), *items)


class EnvRunner:
    def __init__(
        self,
        *,
        env_creator: Callable[[], gym.Env],
        env_name: str,
        module_spec: ModuleSpec,
        num_envs: int,
        fragment_length: int,
        seed: int,
        index: int = 0,
        vectorize_mode: str = "sync",
        normalize_obs: bool = False,
        env_error_retries: int = 3,
        max_failed_episodes: int = 20,
        callbacks: list | None = None,
        info_metrics: dict[str, str] | None = None,
    ) -> None:
        self.index, self.fragment_length, self.num_envs = index, fragment_length, num_envs
        self.env_name = env_name
        in_subprocess = vectorize_mode == "async"
        sub_env = _SubEnvCreator(env_creator, env_name, env_error_retries, max_failed_episodes, in_subprocess)
        # A finished env is reset inside the same step() and its last observation comes
        # back in final_obs, which truncation bootstrapping needs.
        self.env = (AsyncVectorEnv if in_subprocess else CheckedVectorEnv)([sub_env] * num_envs, env_name)
        self.action_space = self.env.single_action_space
        self.policy = module_spec.build_acting(seed)
        has_mask = mask_space(self.env.single_observation_space) is not None
        self.mask_segments = mask_segments(self.action_space) if has_mask else None
        self.filter = MeanStdFilter(self.env.single_observation_space) if normalize_obs else None
        self.weights_version = 0
        self.ep_return = np.zeros(num_envs, np.float64)
        self.ep_length = np.zeros(num_envs, np.int64)
        self.obs = self._connect(self._check_mask(self.env.reset(seed=seed), self.ep_length))
        self.is_first = np.ones(num_envs, bool)  # the next observation starts an episode
        # A policy with memory: each sub-env's recurrent state, carried from one fragment
        # to the next and zeroed where an episode starts (rl/core.py, "Memory").
        self.state = np.zeros((num_envs, self.policy.state_size), np.float32) if self.policy.state_size else None
        # the callbacks' episode hooks and info_metrics (rl/callbacks.py); None: nothing to call per step
        hooks = load_callbacks(callbacks or [])
        self.hooks = (EpisodeHooks(hooks, info_metrics or {}, num_envs=num_envs, runner_index=index)
                      if EpisodeHooks.wanted(hooks, info_metrics or {}) else None)

    def _check_mask(self, obs: Any, episode_steps: np.ndarray) -> Any:
        """Refuse an observation to act in whose action mask leaves no legal action."""
        if self.mask_segments is not None:
            bad = rows_without_legal_action(obs[ACTION_MASK], self.mask_segments)
            if len(bad):
                i = int(bad[0])
                step = f"at step {episode_steps[i]} of its episode" if episode_steps[i] else "from reset()"
                raise EnvContractError(f"env {self.env_name!r} (sub-env {i}) returned an action_mask with no legal "
                                       f"action {step}: {obs[ACTION_MASK][i]}")
        return obs

    def _connect(self, obs: Any, update: bool = True) -> Any:
        return self.filter(obs, update) if self.filter is not None else obs

    def set_weights(self, weights: dict[str, np.ndarray], version: int, connector_state: Any = None) -> None:
        self.policy.load(weights)
        self.weights_version = version
        if connector_state is not None and self.filter is not None:
            self.filter.set_state(connector_state)

    def sample(self) -> Fragment:
        """Step every env ``fragment_length`` times; return the time-major fragment.

        The module's acting outputs besides the actions (``logp``, ``values`` for an
        actor-critic, nothing for a Q-network) become columns of the batch. When values
        are there, ``next_values`` holds V of the true next state: V(final observation)
        on truncation, 0 on termination.
        """
        started = time.perf_counter()
        T, B = self.fragment_length, self.num_envs
        obs_list, action_list = [], []
        extras: dict[str, np.ndarray] = {}
        rewards = np.zeros((T, B), np.float32)
        terminated = np.zeros((T, B), bool)
        truncated = np.zeros((T, B), bool)
        is_first = np.zeros((T, B), bool)
        final_obs: list[tuple[int, int, Any]] = []  # (t, env, last observation) at truncations
        final_states: list[np.ndarray] = []  # with memory: the state after each of those last steps
        memory = self.state is not None
        state_in = np.zeros((T, B, self.state.shape[1]), np.float32) if memory else None
        returns, lengths, episode_metrics = [], [], []
        num_env_errors = 0
        hooks = self.hooks
        for t in range(T):
            obs_list.append(self.obs)
            is_first[t] = self.is_first
            if memory:
                self.state[self.is_first] = 0.0
                state_in[t] = self.state
                out = self.policy.explore(self.obs, self.state)
                self.state = out.pop("state")
            else:
                out = self.policy.explore(self.obs)
            actions_np = out.pop("actions")
            action_list.append(actions_np)
            for key, value in out.items():
                if key not in extras:
                    extras[key] = np.zeros((T, B), np.float32)
                extras[key][t] = value
            step = self.env.step(actions_to_env(actions_np, self.action_space))
            term, trunc = step.terminated, step.truncated
            rewards[t], terminated[t], truncated[t] = step.rewards, term, trunc
            self.ep_return += step.rewards
            self.ep_length += 1
            if hooks is not None:
                for i in range(B):
                    hooks.step(i, step.rewards[i], step.info_of(i))
            done = term | trunc
            self.is_first = done
            if done.any():
                ids = np.flatnonzero(done)
                failed = step.env_errors
                num_env_errors += int(failed.sum())
                kept = ids[~failed[ids]]  # an episode cut by a simulator crash is dropped
                returns += self.ep_return[kept].tolist()
                lengths += self.ep_length[kept].tolist()
                if hooks is not None:
                    ended = {int(i): hooks.end(int(i)) for i in ids}
                    episode_metrics += [ended[int(i)] for i in kept]
                self.ep_return[ids] = 0.0
                self.ep_length[ids] = 0
                cut = np.flatnonzero(trunc & ~term)
                if len(cut):
                    final = self._connect(_stack([step.final_obs[i] for i in cut]), update=False)
                    final_obs += [(t, int(b), tree.map_structure(lambda x, k=k: x[k], final)) for k, b in enumerate(cut)]
                    if memory:
                        final_states += list(self.state[cut])
            self.obs = self._connect(self._check_mask(step.obs, self.ep_length))
        batch = {
            "obs": _stack(obs_list),
            "actions": _stack(action_list),
            "rewards": rewards,
            "terminated": terminated,
            "truncated": truncated,
            "is_first": is_first,
            "bootstrap_obs": tree.map_structure(lambda x: x[None], self.obs),  # (1, B, ...): after the last step
            **extras,
        }
        if memory:
            batch["state_in"] = state_in  # (T, B, S): the state each step was acted from
            self.state[self.is_first] = 0.0
        if "values" in extras:
            batch["next_values"] = self._next_values(extras["values"], terminated, final_obs, final_states)
        return Fragment(batch, returns, lengths, T * B, self.weights_version, self.index, num_env_errors, final_obs,
                        sample_time_s=time.perf_counter() - started,
                        connector_delta=self.filter.pop_delta() if self.filter is not None else None,
                        episode_metrics=episode_metrics)

    def _next_values(self, values: np.ndarray, terminated: np.ndarray, final_obs: list,
                     final_states: list) -> np.ndarray:
        """V(s_{t+1}) of the true next state, (T, B); with memory, each from the state
        after the step that led there."""
        memory = self.state is not None
        next_values = np.empty_like(values)
        next_values[:-1] = values[1:]
        next_values[-1] = self.policy.values(self.obs, self.state) if memory else self.policy.values(self.obs)
        if final_obs:
            ts, bs = [f[0] for f in final_obs], [f[1] for f in final_obs]
            last = _stack([f[2] for f in final_obs])
            next_values[ts, bs] = self.policy.values(last, np.stack(final_states)) if memory else self.policy.values(last)
        next_values[terminated] = 0.0
        return next_values

    def evaluate(self, num_episodes: int) -> dict[str, float]:
        """Greedy returns of ``num_episodes`` whole episodes, started from a fresh reset.

        Each env contributes its first k = ceil(n / B) episodes: taking whichever episodes
        end first would favour short ones and bias the mean.
        """
        per_env = -(-num_episodes // self.num_envs)
        obs = self._connect(self._check_mask(self.env.reset(), np.zeros(self.num_envs, np.int64)), update=False)
        ep_return = np.zeros(self.num_envs)
        done_returns: list[list[float]] = [[] for _ in range(self.num_envs)]
        state = np.zeros_like(self.state) if self.state is not None else None
        while any(len(r) < per_env for r in done_returns):
            if state is None:
                actions = self.policy.greedy(obs)
            else:
                actions, state = self.policy.greedy(obs, state)
            step = self.env.step(actions_to_env(actions, self.action_space))
            obs = self._connect(self._check_mask(step.obs, np.ones(self.num_envs, np.int64)), update=False)
            ep_return += step.rewards
            for i in np.flatnonzero(step.terminated | step.truncated):
                done_returns[i].append(float(ep_return[i]))
                ep_return[i] = 0.0
                if state is not None:
                    state[i] = 0.0
        returns = [r[k] for k in range(per_env) for r in done_returns][:num_episodes]
        return {
            "evaluation/episode_return_mean": float(np.mean(returns)),
            "evaluation/episode_return_min": float(np.min(returns)),
            "evaluation/episode_return_max": float(np.max(returns)),
            "evaluation/num_episodes": len(returns),
        }

    def ping(self) -> bool:
        return True

    def stop(self) -> None:
        self.env.close()


class ControlRunnerFactory:
    """Picklable ``factory(index) -> runner`` of a control-RL run (the RunnerFactory of
    rl/core.py). What every env kind shares: the config, with the fields left to the
    spaces filled from their task family (``family``, ``defaults``), the module spec(s),
    and disjoint seeds per runner. A kind resolves its env in ``__init__`` and builds its
    runners in ``_runner``; :func:`control_runner_factory` picks the kind."""

    kind = "gymnasium"
    """The env kind, as named in errors."""
    connectors = True
    """Whether the kind's runners have observation connectors (normalisation)."""
    memory = False
    """Whether the kind's runners carry a recurrent policy's state (rl/core.py, "Memory")."""

    def __init__(self, config: ControlConfig) -> None:
        self.config = config
        if config.memory and not self.memory:
            raise ConfigError(f"memory is not built for {self.kind} envs yet; leave it out (memory: null)")
        if not self.connectors:
            for key in ("normalize_obs", "normalize_rewards"):
                if getattr(config, key):
                    raise ConfigError(f"{key} is not built for {self.kind} envs yet; leave it out or set it false")

    def _pick_defaults(self, observation_space: gym.Space, action_space: gym.Space) -> ControlConfig:
        """Fill the config's fields left None from the spaces' task family (kept in
        ``family`` and ``defaults``: the header and the first progress row show them)."""
        self.family = space_family(observation_space, action_space)
        self.config, self.defaults = self.config.with_family_defaults(self.family, connectors=self.connectors)
        return self.config

    def _module_spec(self, observation_space: gym.Space, action_space: gym.Space, env_name: str) -> ModuleSpec:
        c = self.config
        return ModuleSpec(observation_space, action_space, hidden_sizes=tuple(c.hidden_sizes), activation=c.activation,
                          shared_encoder=c.shared_encoder, env_name=env_name, encode_mask=c.encode_action_mask,
                          memory=c.memory, memory_size=c.memory_size)

    def __call__(self, index: int) -> Any:
        # Runners get disjoint seed ranges: env i of runner k is seeded seed + 1000 k + i.
        return self._runner(index, self.config.num_envs_per_runner, self.config.seed + 1000 * index)

    def _runner(self, index: int, num_envs: int, seed: int) -> Any:
        raise NotImplementedError

    def evaluation_runner(self, num_episodes: int) -> Any:
        return self._runner(-1, min(num_episodes, 8), self.config.seed + 999_983)

    def make_connector(self) -> MeanStdFilter | None:
        return None


class EnvRunnerFactory(ControlRunnerFactory):
    """A gymnasium env (an id, a registered name, a class or a creator), probed once for
    its spaces; its runners are :class:`EnvRunner`s, which act without torch."""

    memory = True
    episode_hooks = True
    """Its runners call the callbacks' episode hooks and gather ``info_metrics``."""

    def __init__(self, config: ControlConfig, *, adapt_spec: Callable[[ModuleSpec], Any] = lambda spec: spec) -> None:
        super().__init__(config)
        c = self.config
        if c.policy_snapshots:
            raise ConfigError(f"policy_snapshots is for multi-agent envs; {c.env!r} has one agent")
        self.env_creator = make_env_creator(c.env, c.env_config)
        probe = probe_env(self.env_creator)
        observation_space, action_space = probe.observation_space, probe.action_space
        probe.close()
        check_spaces(observation_space, action_space, self.env_creator.name)
        self._pick_defaults(observation_space, action_space)
        self.module_spec = adapt_spec(self._module_spec(observation_space, action_space, self.env_creator.name))

    def make_connector(self) -> MeanStdFilter | None:
        return MeanStdFilter(self.module_spec.observation_space) if self.config.normalize_obs else None

    def _runner(self, index: int, num_envs: int, seed: int) -> EnvRunner:
        c = self.config
        return EnvRunner(
            env_creator=self.env_creator, env_name=self.env_creator.name, module_spec=self.module_spec,
            num_envs=num_envs, fragment_length=c.rollout_fragment_length, seed=seed, index=index,
            vectorize_mode=c.vectorize_mode, normalize_obs=c.normalize_obs, env_error_retries=c.env_error_retries,
            max_failed_episodes=c.max_failed_episodes,
            # the evaluation runner (index -1) counts no episodes for the training's metrics
            callbacks=c.callbacks if index >= 0 else None, info_metrics=c.info_metrics if index >= 0 else None,
        )


# The one table of env kinds: which factory builds a run's runners. The other kinds act
# through torch modules and are imported only when a run uses them, so that unpickling
# an EnvRunnerFactory in a runner process loads no torch (see the module docstring).
RUNNER_FACTORIES = {
    "external": "rlfleet.rl.runners.external_runner:ExternalRunnerFactory",  # env: external (simulators connect)
    "multi_agent": "rlfleet.rl.runners.multi_agent_runner:MultiAgentRunnerFactory",  # env: pettingzoo:<module>
    "gymnasium": "rlfleet.rl.runners.env_runner:EnvRunnerFactory",  # anything else
}


def env_kind(env: Any) -> str:
    """The key of ``RUNNER_FACTORIES`` for a config's ``env``."""
    if env == "external":  # rl/runners/external_runner.py EXTERNAL_ENV (not imported here: it loads torch)
        return "external"
    return "multi_agent" if is_multi_agent_name(env) else "gymnasium"


def control_runner_factory(config: ControlConfig, *, adapt_spec: Callable[[ModuleSpec], Any] = lambda spec: spec
                           ) -> ControlRunnerFactory:
    """The runner factory of ``config``'s env kind (``RUNNER_FACTORIES``)."""
    import importlib

    module, cls = RUNNER_FACTORIES[env_kind(config.env)].split(":")
    return getattr(importlib.import_module(module), cls)(config, adapt_spec=adapt_spec)

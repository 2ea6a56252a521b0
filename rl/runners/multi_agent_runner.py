"""MultiAgentEnvRunner: steps copies of a multi-agent env (envs/multi_agent.py) with one
CPU module per policy, and returns one time-major batch per policy (a MultiBatch).

Every agent's experience is a run of steps: a step is the agent's observation, its
action, the rewards paid to it until it acts again (or ends), and the value of what
follows. A step is complete once the agent's next observation is known (it acts again:
V(next obs) comes from that forward pass) or it ended (terminated: no future; truncated:
V(its last observation)). Complete steps of one agent are cut into columns of
``fragment_length`` steps, and a policy's batch is the columns of every agent mapped to
it, with the single-agent layout (rl/runners/env_runner.py): so PPO's GAE runs on it unchanged,
and agents that join late, leave early or act in turns need no special case. Leftover
steps wait for the next ``sample``.
"""

from __future__ import annotations

import collections
import dataclasses
import fnmatch
import time
import warnings
from typing import Any, Callable

import numpy as np
import torch
import tree

from rlfleet.envs.multi_agent import MultiAgentCreator
from rlfleet.rl.batch import step_columns
from rlfleet.rl.config import ConfigError, closest
from rlfleet.rl.core import ACTION_MASK, Fragment
from rlfleet.rl.runners.env_runner import ControlRunnerFactory
from rlfleet.rl.models.module import ModuleSpec
from rlfleet.rl.spaces import actions_to_env, check_spaces

RANDOM_POLICY = "random"
"""A built-in policy id: agents mapped to it act uniformly at random among their legal
actions and never learn (an opponent for evaluation, or a baseline)."""


class PolicyMapping:
    """Agent id -> policy id: the first ``pattern: policy`` (fnmatch) that matches, else
    ``default``. Picklable (no lambdas), so runners on Ray build the same mapping."""

    def __init__(self, patterns: dict[str, str] | None, default: str = "default") -> None:
        self.patterns, self.default = dict(patterns or {}), default

    def __call__(self, agent: str) -> str:
        for pattern, policy in self.patterns.items():
            if fnmatch.fnmatchcase(agent, pattern):
                return policy
        return self.default


@dataclasses.dataclass
class _Step:
    obs: Any
    action: list[np.ndarray]
    logp: float
    value: float
    weights_version: int
    is_first: bool
    reward: float = 0.0
    terminated: bool = False
    truncated: bool = False
    final_obs: Any = None  # at a truncation: V(final_obs) is the bootstrap
    next_value: float | None = None
    next_obs: Any = None  # what follows the step (for bootstrap_obs)
    state_in: np.ndarray | None = None  # with memory: the agent's state it acted from
    state_out: np.ndarray | None = None  # and the state after it (a truncation's bootstrap reads it)


def _stack(items: list[Any]) -> Any:
    return tree.map_structure(lambda *xs: np.stack(xs), *items)


class MultiAgentEnvRunner:
    def __init__(self, *, env_creator: Callable[[], Any], specs: dict[str, ModuleSpec], mapping: PolicyMapping,
                 num_envs: int, fragment_length: int, seed: int, index: int = 0) -> None:
        self.index, self.fragment_length = index, fragment_length
        self.mapping = mapping
        self.specs = specs
        self.modules = {pid: spec.build().eval() for pid, spec in specs.items()}
        torch.manual_seed(seed)
        self.rng = np.random.default_rng(seed)
        self.weights_version = 0
        self.envs = [env_creator() for _ in range(num_envs)]
        self.obs: list[dict[str, Any]] = []  # per env: the agents that act next -> observation
        for i, env in enumerate(self.envs):
            obs, _ = env.reset(seed=seed + i)
            self.obs.append(obs)
        self.pending: dict[tuple[int, str], _Step] = {}  # the last action of each live agent
        # with memory: each live agent's state, zero at its first step of an episode
        self.states: dict[tuple[int, str], np.ndarray] = {}
        self.complete: dict[tuple[int, str], list[_Step]] = collections.defaultdict(list)
        self.returns: list[collections.Counter] = [collections.Counter() for _ in self.envs]  # per env, per agent
        self.lengths = [0] * len(self.envs)
        self.finished: list[tuple[float, int, dict[str, float]]] = []  # (team return, length, per agent)

    # -- the Runner interface -----------------------------------------------------------------
    def set_weights(self, weights: dict[str, dict[str, np.ndarray]], version: int, connector_state: Any = None) -> None:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", UserWarning)  # read-only arrays from the object store
            for pid, module in self.modules.items():
                if pid in weights:
                    module.load_state_dict({k: torch.from_numpy(v) for k, v in weights[pid].items()})
        self.weights_version = version

    def sample(self) -> Fragment:
        """Step every env ``fragment_length`` times; return the full columns of every policy."""
        started = time.perf_counter()
        for _ in range(self.fragment_length):
            self._step()
        batches, version = self._cut_columns()
        finished, self.finished = self.finished, []
        agent_returns: dict[str, list[float]] = collections.defaultdict(list)
        for _, _, per_agent in finished:
            for agent, ret in per_agent.items():
                agent_returns[agent].append(ret)
        return Fragment(batches, [f[0] for f in finished], [f[1] for f in finished],
                        self.fragment_length * len(self.envs), version, self.index,
                        sample_time_s=time.perf_counter() - started, agent_returns=dict(agent_returns))

    def evaluate(self, num_episodes: int) -> dict[str, float]:
        """``num_episodes`` whole episodes on env 0 from fresh resets, every learned policy
        greedy (agents mapped to ``random`` random): each agent's mean return and win rate
        (episodes where its return beats every other agent's), and how many actions broke
        the action mask (a masked policy takes none)."""
        env = self.envs[0]
        totals: dict[str, list[float]] = collections.defaultdict(list)
        team, illegal = [], 0
        for episode in range(num_episodes):
            obs, _ = env.reset(seed=10_000 + episode)
            returns: collections.Counter = collections.Counter()
            states: dict[str, torch.Tensor] = {}  # with memory: each agent's, from zeros
            while obs:
                actions = {}
                for agent, o in obs.items():
                    pid = self.mapping(agent)
                    if pid == RANDOM_POLICY:
                        actions[agent] = self._random_action(agent, o)
                        continue
                    module, one = self.modules[pid], tree.map_structure(lambda x: torch.from_numpy(np.asarray(x)[None]), o)
                    with torch.inference_mode():
                        if getattr(module, "state_size", 0):
                            leaves, states[agent] = module.forward_inference(
                                one, states.get(agent, torch.zeros(1, module.state_size)))
                        else:
                            leaves = module.forward_inference(one)
                    action = actions_to_env([leaf.numpy() for leaf in leaves], self.specs[pid].action_space)
                    actions[agent] = tree.map_structure(lambda x: x[0], action)
                    if isinstance(o, dict) and ACTION_MASK in o and not o[ACTION_MASK][int(actions[agent])]:
                        illegal += 1
                obs, rewards, terminations, truncations, _ = env.step(actions)
                for agent, reward in rewards.items():
                    returns[agent] += float(reward)
                obs = {a: o for a, o in obs.items() if not (terminations.get(a) or truncations.get(a))}
            team.append(float(sum(returns.values())))
            for agent in env.possible_agents:
                totals[agent].append(returns[agent])
        metrics = {"evaluation/episode_return_mean": float(np.mean(team)), "evaluation/num_episodes": num_episodes,
                   "evaluation/illegal_actions": illegal}
        for agent, values in totals.items():
            others = [totals[a] for a in totals if a != agent]
            wins = [all(v > o[k] for o in others) for k, v in enumerate(values)]
            metrics[f"evaluation/agents/{agent}/episode_return_mean"] = float(np.mean(values))
            metrics[f"evaluation/agents/{agent}/win_rate"] = float(np.mean(wins))
        return metrics

    def _random_action(self, agent: str, obs: Any) -> Any:
        space = self.envs[0].action_space(agent)
        if isinstance(obs, dict) and ACTION_MASK in obs:
            return int(self.rng.choice(np.flatnonzero(obs[ACTION_MASK]))) + int(getattr(space, "start", 0))
        return space.sample()

    def ping(self) -> bool:
        return True

    def stop(self) -> None:
        for env in self.envs:
            env.close()

    # -- one step of every env -------------------------------------------------------------------
    def _step(self) -> None:
        groups: dict[str, list[tuple[int, str, Any]]] = collections.defaultdict(list)
        for i, obs in enumerate(self.obs):
            for agent, o in obs.items():
                groups[self.mapping(agent)].append((i, agent, o))
        actions: list[dict[str, Any]] = [{} for _ in self.envs]
        for pid, items in groups.items():
            if pid == RANDOM_POLICY:
                for i, agent, o in items:
                    actions[i][agent] = self._random_action(agent, o)
                continue
            module = self.modules[pid]
            batch = tree.map_structure(torch.from_numpy, _stack([o for _, _, o in items]))
            state_in = self._states(module, [(i, agent) for i, agent, _ in items])
            with torch.inference_mode():
                out = module.forward_exploration(batch, **({} if state_in is None else {"state": state_in}))
            leaves = [a.numpy() for a in out["actions"]]
            env_actions = actions_to_env(leaves, self.specs[pid].action_space)
            logp, values = out["logp"].numpy(), out["values"].numpy()
            state_out = out["state"].numpy() if state_in is not None else None
            for k, (i, agent, o) in enumerate(items):
                key = (i, agent)
                before = self.pending.pop(key, None)
                if before is not None:  # the agent acts again: its last step is complete
                    before.next_value, before.next_obs = float(values[k]), o
                    self.complete[key].append(before)
                self.pending[key] = _Step(o, [leaf[k] for leaf in leaves], float(logp[k]), float(values[k]),
                                          self.weights_version, is_first=before is None)
                if state_out is not None:
                    self.pending[key].state_in, self.pending[key].state_out = state_in[k].numpy(), state_out[k]
                    self.states[key] = state_out[k]
                actions[i][agent] = tree.map_structure(lambda x, k=k: x[k], env_actions)
        for i, env in enumerate(self.envs):
            obs, rewards, terminations, truncations, _ = env.step(actions[i])
            self.lengths[i] += 1
            for agent, reward in rewards.items():
                self.returns[i][agent] += float(reward)
                if (i, agent) in self.pending:  # a reward belongs to the agent's last action
                    self.pending[(i, agent)].reward += float(reward)
            acting = {}
            for agent, o in obs.items():
                if terminations.get(agent) or truncations.get(agent):
                    self._end(i, agent, o, terminated=bool(terminations.get(agent)))
                else:
                    acting[agent] = o
            if not acting:  # nobody left to act: the episode is over
                for (j, agent) in [k for k in self.pending if k[0] == i]:  # agents the env never ended
                    self._end(i, agent, self.pending[(i, agent)].obs, terminated=False)
                self.finished.append((float(sum(self.returns[i].values())), self.lengths[i], dict(self.returns[i])))
                self.returns[i], self.lengths[i] = collections.Counter(), 0
                acting, _ = env.reset()
            self.obs[i] = acting

    def _states(self, module: Any, keys: list[tuple[int, str]]) -> torch.Tensor | None:
        """The agents' states (B, S) for a module with memory (zeros where an agent's
        episode starts), else None."""
        size = getattr(module, "state_size", 0)
        if not size:
            return None
        zeros = np.zeros(size, np.float32)
        return torch.from_numpy(np.stack([self.states.get(key, zeros) for key in keys]))

    def _end(self, i: int, agent: str, last_obs: Any, *, terminated: bool) -> None:
        self.states.pop((i, agent), None)  # its next episode starts from zeros
        step = self.pending.pop((i, agent), None)
        if step is None:
            return  # ended before it ever acted: nothing to learn from
        step.terminated, step.truncated, step.next_obs = terminated, not terminated, last_obs
        if terminated:
            step.next_value = 0.0
        else:
            step.final_obs = last_obs  # bootstrapped from V(last_obs) when its column is cut
        self.complete[(i, agent)].append(step)

    # -- the fragment -----------------------------------------------------------------------------
    def _cut_columns(self) -> tuple[dict[str, dict[str, Any]], int]:
        T = self.fragment_length
        columns: dict[str, list[list[_Step]]] = collections.defaultdict(list)
        for (i, agent), steps in self.complete.items():
            while len(steps) >= T:
                columns[self.mapping(agent)].append(steps[:T])
                del steps[:T]
        batches = {pid: self._batch(pid, cols) for pid, cols in columns.items()}
        versions = [s.weights_version for cols in columns.values() for col in cols for s in col]
        return batches, min(versions) if versions else self.weights_version

    def _batch(self, pid: str, columns: list[list[_Step]]) -> dict[str, Any]:
        bootstrap = [s for col in columns for s in col if s.next_value is None]  # truncations
        memory = columns[0][0].state_in is not None
        if bootstrap:
            # with memory, V(final observation) from the state after the agent's last step
            state = {"state": torch.from_numpy(np.stack([s.state_out for s in bootstrap]))} if memory else {}
            with torch.inference_mode():
                values = self.modules[pid].compute_values(
                    tree.map_structure(torch.from_numpy, _stack([s.final_obs for s in bootstrap])), **state)
            for s, v in zip(bootstrap, values.tolist()):
                s.next_value = v
        rows = [[col[t] for col in columns] for t in range(self.fragment_length)]  # (T, B)
        truncations = [(t, b) for t, row in enumerate(rows) for b, s in enumerate(row) if s.final_obs is not None]
        columns_of_steps = step_columns(rows)
        obs = columns_of_steps["obs"]
        memory_columns = {"state_in": np.array([[s.state_in for s in row] for row in rows], np.float32)} if memory else {}
        return {
            **columns_of_steps,
            **memory_columns,  # (T, B, S): each step's state, as the env runner stores it
            # the truncations' last observations, for learners that recompute values (IMPALA):
            # (K, 2) positions and (K, ...) observations
            "final_tb": np.asarray(truncations, np.int64).reshape(-1, 2),
            "final_obs": (_stack([rows[t][b].final_obs for t, b in truncations]) if truncations
                          else tree.map_structure(lambda x: x[0, :0], obs)),
            "logp": np.array([[s.logp for s in row] for row in rows], np.float32),
            "values": np.array([[s.value for s in row] for row in rows], np.float32),
            "next_values": np.array([[s.next_value for s in row] for row in rows], np.float32),
            "bootstrap_obs": tree.map_structure(lambda x: x[None], _stack([col[-1].next_obs for col in columns])),
        }


def _evaluation_mapping(c: Any) -> dict[str, str]:
    """The evaluation patterns first (they win over the training mapping), then the rest."""
    evaluation, training = c.evaluation_policy_mapping or {}, c.policy_mapping or {}
    return {**evaluation, **{k: v for k, v in training.items() if k not in evaluation}}


class MultiAgentRunnerFactory(ControlRunnerFactory):
    """A PettingZoo env (``pettingzoo:<module>``): agents map to policies, one module spec
    per policy, runners are :class:`MultiAgentEnvRunner`s."""

    kind = "multi-agent"
    connectors = False
    memory = True  # each agent's state, per env (MultiAgentEnvRunner.states)

    def __init__(self, config: Any, *, adapt_spec: Callable[[ModuleSpec], Any] = lambda spec: spec) -> None:
        super().__init__(config)
        c = self.config
        self.env_creator = MultiAgentCreator(c.env, c.env_config)
        self.mapping = PolicyMapping(c.policy_mapping)
        specs = self._policy_specs()
        if not specs:
            raise ConfigError(f"policy_mapping {c.policy_mapping} maps every agent of {c.env!r} to "
                              f"{RANDOM_POLICY!r}: no policy is left to train; map at least one agent to a policy")
        self._check_mappings(specs)
        first = next(iter(specs.values()))
        self._pick_defaults(first.observation_space, first.action_space)
        self.module_spec = {pid: adapt_spec(spec) for pid, spec in specs.items()}
        if c.policies_to_train is not None and not c.policies_to_train:
            raise ConfigError(f"policies_to_train is empty: no policy would learn (policies: "
                              f"{', '.join(sorted(self.module_spec))}); leave it out to train them all")
        unknown = sorted(set(c.policies_to_train or []) - set(self.module_spec))
        if unknown:
            raise ConfigError(f"policies_to_train names {unknown[0]!r}, which no agent maps to "
                              f"(policies: {', '.join(sorted(self.module_spec))})")
        self._check_snapshots()

    def _check_mappings(self, specs: dict[str, ModuleSpec]) -> None:
        """Every policy ``evaluation_policy_mapping`` names exists (a typo was a KeyError
        in the first evaluation), and each pattern of either mapping matches an agent."""
        c, policies = self.config, [*sorted(specs), RANDOM_POLICY]
        for pattern, pid in (c.evaluation_policy_mapping or {}).items():
            if pid not in policies:
                hint = closest(str(pid), policies) or f" (policies: {', '.join(policies)})"
                raise ConfigError(f"evaluation_policy_mapping maps {pattern!r} to {pid!r}, which is no policy{hint}")
        for key in ("policy_mapping", "evaluation_policy_mapping"):
            for pattern in getattr(c, key) or {}:
                if not any(fnmatch.fnmatchcase(agent, pattern) for agent in self.agents):
                    hint = closest(pattern, self.agents) or f" (agents: {', '.join(self.agents)})"
                    raise ConfigError(f"{key}: {pattern!r} matches no agent of {c.env!r}{hint}")

    def _policy_specs(self) -> dict[str, ModuleSpec]:
        """One module spec per policy, from the spaces of the agents mapped to it (which
        must agree: they share one network)."""
        c = self.config
        env = self.env_creator()
        try:
            agents = self.agents = list(env.possible_agents)
            spaces_of = {a: (env.observation_space(a), env.action_space(a)) for a in agents}
        finally:
            env.close()
        specs: dict[str, ModuleSpec] = {}
        first: dict[str, str] = {}
        for agent in agents:
            pid = self.mapping(agent)
            if pid == RANDOM_POLICY:
                continue  # acts at random: no module
            obs_space, act_space = spaces_of[agent]
            if pid in specs:
                if (specs[pid].observation_space, specs[pid].action_space) != (obs_space, act_space):
                    raise ConfigError(f"env {c.env!r}: agents {first[pid]!r} and {agent!r} share policy {pid!r} but "
                                      f"not their spaces ({specs[pid].observation_space} vs {obs_space}); map them "
                                      "to separate policies (policy_mapping)")
                continue
            check_spaces(obs_space, act_space, f"{c.env} ({agent})")
            first[pid] = agent
            specs[pid] = self._module_spec(obs_space, act_space, c.env)
        return specs

    def _check_snapshots(self) -> None:
        c, specs = self.config, self.module_spec
        for target, source in (c.policy_snapshots or {}).items():
            for role, pid in (("copy", target), ("source", source)):
                if pid not in specs:
                    hint = closest(str(pid), list(specs)) or f" (policies: {', '.join(sorted(specs))})"
                    raise ConfigError(f"policy_snapshots: {role} {pid!r} is no policy an agent maps to{hint}")
            if target == source:
                raise ConfigError(f"policy_snapshots: {target!r} cannot be a snapshot of itself")
            if target in (c.policies_to_train or []):
                raise ConfigError(f"policy_snapshots: {target!r} is in policies_to_train; a snapshot does not learn")
            if (specs[target].observation_space, specs[target].action_space) != \
                    (specs[source].observation_space, specs[source].action_space):
                raise ConfigError(f"policy_snapshots: {target!r} and {source!r} act in different spaces")

    def evaluation_runner(self, num_episodes: int) -> MultiAgentEnvRunner:
        """With its own mapping: a trained policy against random opponents, say."""
        c = self.config
        return MultiAgentEnvRunner(env_creator=self.env_creator, specs=self.module_spec,
                                   mapping=PolicyMapping(_evaluation_mapping(c)), num_envs=1,
                                   fragment_length=c.rollout_fragment_length, seed=c.seed + 999_983, index=-1)

    def _runner(self, index: int, num_envs: int, seed: int) -> MultiAgentEnvRunner:
        c = self.config
        return MultiAgentEnvRunner(env_creator=self.env_creator, specs=self.module_spec, mapping=self.mapping,
                                   num_envs=num_envs, fragment_length=c.rollout_fragment_length, seed=seed,
                                   index=index)

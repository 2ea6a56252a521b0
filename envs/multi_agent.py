"""Multi-agent envs: PettingZoo's Parallel API is the native form (dicts keyed by agent id);
turn-based (AEC) envs are seen through :class:`TurnBased`, which speaks the same API.

One step of a multi-agent env, as the runner (rl/runners/multi_agent_runner.py) reads it::

    obs, rewards, terminations, truncations, infos = env.step({agent: action, ...})

- ``obs`` holds the agents that act next, plus the last observation of every agent that
  ended in this step (``terminations[a]`` or ``truncations[a]`` true);
- ``rewards`` may name any agent, acting or not: a reward belongs to that agent's last
  action (a turn-based game pays the loser while the winner moves);
- agents may appear (first seen in ``obs``) and end at different times; the episode is
  over when no agent is left to act.

``pettingzoo:<module>`` names an env by its module (``pettingzoo:mpe2.simple_spread_v3``,
``pettingzoo:pettingzoo.classic.tictactoe_v3``): its ``parallel_env`` when it has one, else
its (AEC) ``env`` through :class:`TurnBased`; ``env_config`` goes to that constructor. Your
own env: ``register_multi_agent_env("my_game", creator)``, then ``env: my_game``.
"""

from __future__ import annotations

import importlib
from typing import Any, Callable

PETTINGZOO = "pettingzoo:"


class MultiAgentEnvError(ValueError):
    """A multi-agent env name that does not resolve, or an env that breaks the API."""


_REGISTRY: dict[str, Callable[..., Any]] = {}


def register_multi_agent_env(name: str, creator: Callable[..., Any]) -> None:
    """Make ``env: name`` build ``creator(**env_config)``: a PettingZoo ParallelEnv, or an
    AEC env (wrapped in :class:`TurnBased`). Register it in a module the run imports
    (``--import``), so Ray workers see it too."""
    if not callable(creator):
        raise MultiAgentEnvError(f"register_multi_agent_env({name!r}): the creator must be callable")
    _REGISTRY[name] = creator


def is_multi_agent_name(env: Any) -> bool:
    return isinstance(env, str) and (env.startswith(PETTINGZOO) or env in _REGISTRY)


class MultiAgentCreator:
    """Picklable ``creator() -> env`` for a ``pettingzoo:<module>`` name (by reference: each
    process imports the module itself)."""

    def __init__(self, name: str, env_config: dict[str, Any] | None = None) -> None:
        if not is_multi_agent_name(name):
            raise MultiAgentEnvError(f"a multi-agent env is named {PETTINGZOO}<module> or registered with "
                                     f"register_multi_agent_env, got {name!r}")
        self.name, self.module_name = name, name[len(PETTINGZOO):]
        self.env_config = dict(env_config or {})
        self.registered = _REGISTRY.get(name)  # pickled by reference: a worker imports its module
        self._factory()  # fail here, with the name, not in a runner

    def _factory(self) -> Callable[..., Any]:
        if self.registered is not None:
            return lambda **kw: _as_parallel(self.registered(**kw))
        try:
            module = importlib.import_module(self.module_name)
        except ImportError as e:
            raise MultiAgentEnvError(f"env {self.name!r}: cannot import {self.module_name!r} ({e}); PettingZoo envs "
                                     "need pip install 'rlfleet[pettingzoo]' (MPE tasks: 'rlfleet[mpe2]')") from None
        if hasattr(module, "parallel_env"):
            return module.parallel_env
        if hasattr(module, "env"):
            return lambda **kw: TurnBased(module.env(**kw))
        raise MultiAgentEnvError(f"env {self.name!r}: module {self.module_name!r} has no parallel_env() or env()")

    def __call__(self) -> Any:
        try:
            return self._factory()(**self.env_config)
        except TypeError as e:
            raise MultiAgentEnvError(f"env {self.name!r}: env_config {self.env_config} does not fit: {e}") from None


def _as_parallel(env: Any) -> Any:
    """A ParallelEnv as it is; an AEC env (it has ``agent_iter``) through :class:`TurnBased`."""
    return TurnBased(env) if hasattr(env, "agent_iter") else env


class TurnBased:
    """A PettingZoo AEC env through the parallel API: each step's ``obs`` holds the agent
    whose turn it is (and the last observation of agents that just ended); rewards of every
    agent are reported after every move; the ``None`` moves AEC asks of ended agents are
    made here."""

    def __init__(self, aec: Any) -> None:
        self.aec = aec
        self.possible_agents = list(aec.possible_agents)

    @property
    def agents(self) -> list[str]:
        return list(self.aec.agents)

    def observation_space(self, agent: str) -> Any:
        return self.aec.observation_space(agent)

    def action_space(self, agent: str) -> Any:
        return self.aec.action_space(agent)

    def reset(self, seed: int | None = None, options: dict | None = None) -> tuple[dict, dict]:
        self.aec.reset(seed=seed, options=options)
        self.ended: set[str] = set()
        obs, rewards, term, trunc, infos = self._after_move({})
        return obs, infos

    def step(self, actions: dict[str, Any]) -> tuple[dict, dict, dict, dict, dict]:
        agent = self.aec.agent_selection
        if agent not in actions:
            raise MultiAgentEnvError(f"it is {agent!r}'s turn; got actions for {sorted(actions)}")
        self.aec.step(actions[agent])
        return self._after_move(dict(self.aec.rewards))

    def _after_move(self, rewards: dict[str, float]) -> tuple[dict, dict, dict, dict, dict]:
        obs: dict[str, Any] = {}
        term: dict[str, bool] = {}
        trunc: dict[str, bool] = {}
        rewards = {a: float(r) for a, r in rewards.items()}
        while self.aec.agents:
            for a in self.aec.agents:  # agents that ended with this move: their last observation
                if a not in self.ended and (self.aec.terminations[a] or self.aec.truncations[a]):
                    self.ended.add(a)
                    term[a] = bool(self.aec.terminations[a])
                    trunc[a] = not term[a]
                    obs[a] = self.aec.observe(a)
            selected = self.aec.agent_selection
            if selected not in self.ended:
                obs[selected] = self.aec.observe(selected)
                term.setdefault(selected, False)
                trunc.setdefault(selected, False)
                break
            self.aec.step(None)  # AEC: an ended agent is stepped with None until it leaves (no new reward)
        infos = {a: self.aec.infos.get(a, {}) for a in obs}
        return obs, rewards, term, trunc, infos

    def close(self) -> None:
        self.aec.close()

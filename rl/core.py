"""The contract between the driver, the env runners and the learners. Read this first.

    driver (rl/algorithm.py)                      knows no algorithm and no env kind
      |  factory = RunnerFactory(config, ...)     one picklable factory per run, of the env's kind
      |                                           (rl/runners/env_runner.py RUNNER_FACTORIES)
      |  runners = [factory(i) for i in N]        in this process or as Ray actors
      |  algorithm.training_step():               the algorithm's one hook per iteration
      |    fragments = self.sample()              -> Fragments, stamped with their weights version
      |    batch = ...                            its own postprocessing (GAE, replay, V-trace layout)
      |    result = learner_group.update(batch, env_steps=...)   -> UpdateResult
      |    self.sync_weights()                    through the object store: put once

**Batches.** A batch is a dict of (nested) numpy arrays (:data:`SampleBatch`). A runner's
fragment is time-major, ``(T, B, ...)``; what reaches a learner is whatever the algorithm
builds from fragments: rows ``(N, ...)`` for PPO, DQN and LM post-training, time-major
``(T, B, ...)`` for IMPALA. Every column is documented where it is made: control fragments
in :mod:`rlfleet.rl.runners.env_runner` (obs, actions, rewards, terminated, truncated, is_first,
bootstrap_obs, logp, values, next_values), completions in :mod:`rlfleet.rl.lm.generator`
(sequences, attention_mask, completion_mask, logprobs, rewards). Several policies
(multi-agent) are a :data:`MultiBatch`, one ``SampleBatch`` per policy id; a single-policy
run uses :data:`DEFAULT_POLICY`.

**Action masks.** An env with illegal actions returns a Dict observation with an
``action_mask`` entry (:data:`ACTION_MASK`): 1 for a legal action, 0 for an illegal one,
for a Discrete action space one entry per action, for a MultiDiscrete one the
sub-actions' masks one after the other (``sum(nvec)`` entries). Being part of the
observation, the mask travels in every column that holds observations (``obs``,
``bootstrap_obs``, final observations, DQN's ``next_obs``), so each algorithm knows the
legal actions of every state it acts in or bootstraps from: policies put zero probability
on illegal actions when sampling, in the log-probabilities and entropies of their loss and
when greedy; DQN explores among and maximises over legal actions only. The mask is not an
encoder input unless the config asks (``encode_action_mask``). Runners refuse an
observation whose mask leaves no legal action.

**Weights and versions.** Weights are a flat ``{name: numpy array}`` state dict. The
driver owns a counter: every broadcast of new weights increments it, the weights travel
with their version, and a runner stamps every fragment with the version of the weights
that chose its actions. ``policy lag = driver version - fragment version`` is therefore a
measured number for every source, synchronous (PPO: 0), asynchronous (IMPALA) or remote
(simulators over the network, asynchronous LM rollouts), and an algorithm may drop
fragments whose lag is too large. Restoring a checkpoint restores the counter and
re-sends the weights without a new version.

**Adding an algorithm** is one folder under ``algorithms/`` and one line in the registry
(``rlfleet.algorithms.ALGORITHMS``: name -> config class); the CLI's choices, ``--help``,
``--list-algorithms`` and the per-family defaults test come from it, and packaging finds
the folder. The folder holds:
``config.py``, a dataclass extending :class:`~rlfleet.rl.config.ControlConfig` (on-policy)
or :class:`~rlfleet.rl.replay.config.OffPolicyConfig` (replay), whose ``algorithm_class()``
names the algorithm; ``learner.py``, a :class:`~rlfleet.rl.learner.Learner` subclass with
its ``compute_loss``; ``algorithm.py``, an :class:`~rlfleet.rl.algorithm.Algorithm` subclass
with ``training_step`` (or the shared off-policy loop's, :mod:`rlfleet.rl.replay.loop`) and,
where its networks are not the default actor-critic, ``adapt_module_spec`` returning its
own ``ModuleSpec`` subclass (``module.py``). ``algorithms/td3/`` is the worked example.

**Modules.** What a spec's ``build()`` returns is a ``torch.nn.Module`` with the acting
entries of :class:`ModuleProtocol`; what else it can do it declares in ``capabilities``
(:data:`VALUES`, :data:`DISTRIBUTION`, :data:`Q_VALUES`), and the code around training
(runners, export, serving, external simulators) asks :func:`has_capability`, never
``hasattr``. A module that declares none acts, evaluates, serves and exports its greedy
policy; what needs a capability it lacks is refused in one line.

**Memory.** A module with a recurrent core (``memory: gru | lstm``, rl/models/memory.py)
declares :data:`MEMORY` and a ``state_size`` S. Its state for B envs is one float32 array
(B, S); every acting entry takes it and returns the next one (``explore``'s ``state``
entry; ``greedy`` returns (actions, state)). The env runner keeps it per sub-env, zeroes it
where an episode starts, carries it across fragment boundaries, and stores the state each
step was acted from as the fragment's ``state_in`` (T, B, S), so a chunk that starts
mid-episode starts from its stored state (a restarted runner starts its episodes afresh).
The learner trains on sequences (rl/batch.py ``to_sequences``: chunks of ``max_seq_len``
steps, optional ``burn_in``, a ``loss_mask``); minibatches and learner groups split whole
sequences, never through one (IMPALA runs whole fragments, restarting from the stored
state every ``max_seq_len`` steps; DQN replays whole sequences, rl/replay/sequences.py).
PPO, IMPALA and DQN train memory (on multi-agent envs each agent has its own state; an
external simulator's connection keeps one per episode, server-side inference only);
evaluation, ONNX export and serving carry the state; SAC and TD3 refuse it in one line.

**Optimiser groups.** A learner's parameters are split into named groups
(``Learner.parameter_groups``; one, :data:`DEFAULT_GROUP`, by default), each with its own
Adam on the shared learning-rate schedule. ``compute_loss`` returns one loss for one group,
or ``{group: loss}``; a group left out of the dict takes no step (TD3's delayed actor). Each
group's loss must reach only its own group's parameters (SAC's actor loss reads the
critics with their weights detached): the learner backpropagates the sum once, then clips
and steps each group on its own gradients, reporting ``losses/grad_norm_<group>``.

**Learners.** Every algorithm's learner has one entry, ``update(batch, *, env_steps)``.
The base class (:class:`rlfleet.rl.learner.Learner`) owns the learning-rate schedule, the
epoch/minibatch loop, gradient clipping, the all-reduce of gradients and statistics,
and metric averaging; an algorithm supplies ``compute_loss`` and, where needed,
``prepare`` (per-batch columns such as GRPO's advantages) and ``minibatches`` (how the
batch is cut). With N learners every learner reads the same batch from the object store
and works on its equal part of every minibatch (PPO, DQN, LM) or its equal share of the
envs (IMPALA, never a cut through time); all learners draw the same shuffles, so the
update equals one learner's on the whole batch and the learners stay identical.
"""

from __future__ import annotations

import dataclasses
from typing import Any, Protocol

import numpy as np

SampleBatch = dict[str, Any]
"""Columns of (nested) numpy arrays; the leading axes are documented per source."""

MultiBatch = dict[str, SampleBatch]
"""One batch per policy id (multi-agent)."""

ACTION_MASK = "action_mask"
"""The key of the action mask in a Dict observation (see the module docstring)."""

DEFAULT_POLICY = "default"
"""The policy id of a single-policy run."""

DEFAULT_GROUP = "default"
"""The optimiser group of a learner that has one (see "Optimiser groups")."""

Weights = dict[str, np.ndarray]
"""A module's state dict as CPU numpy arrays (stored once in the object store)."""

VALUES = "values"
"""``compute_values(obs) -> V(s)`` (B,): runners add ``values`` and ``next_values`` columns,
external simulators may ask for values."""
DISTRIBUTION = "distribution"
"""``features(obs)``, ``dist_inputs(features)``, ``values(features)``: the action
distribution's inputs (client-side sampling exports them)."""
MEMORY = "memory"
"""A recurrent core: every acting entry takes the state (B, S) and returns the next one
(see "Memory" in the module docstring); ``forward_train`` takes sequences."""
Q_VALUES = "q_values"
"""``forward_train(obs) -> Q(s, .)`` (B, A) and an ``epsilon`` buffer: epsilon-greedy acting."""


class ModuleProtocol(Protocol):
    """What every module a spec builds offers (torch tensors in and out, nested obs)."""

    capabilities: frozenset[str]
    """Which of :data:`VALUES`, :data:`DISTRIBUTION`, :data:`Q_VALUES` it offers."""

    def forward_exploration(self, obs: Any) -> dict[str, Any]:
        """{"actions": [one tensor per action leaf], extra columns (``logp``, ``values``)}."""
        ...

    def forward_inference(self, obs: Any) -> list[Any]:
        """Greedy actions, one tensor per action leaf, without autograd."""
        ...

    def greedy_actions(self, obs: Any) -> list[Any]:
        """Greedy actions, traceable (export)."""
        ...

    def forward_details(self, obs: Any) -> dict[str, Any]:
        """What serving returns on request besides the action (probabilities, Q-values)."""
        ...


def has_capability(module: Any, capability: str) -> bool:
    """Whether ``module`` declares ``capability`` (rl/core.py, "Modules")."""
    return capability in getattr(module, "capabilities", frozenset())


@dataclasses.dataclass
class Fragment:
    """What a runner returns from one ``sample()`` call."""

    batch: SampleBatch
    """Time-major ``(T, B, ...)`` for env runners; one row per completion for LM runners."""
    episode_returns: list[float]
    """One per episode finished inside this fragment (an LM completion is an episode)."""
    episode_lengths: list[int]
    env_steps: int
    """Env steps (or completions) this fragment holds."""
    weights_version: int
    """The version of the weights that chose its actions (see the module docstring)."""
    runner_index: int = 0
    num_env_errors: int = 0
    """Episodes dropped because the simulator raised (or, external, its client was lost)."""
    final_obs: list[tuple[int, int, Any]] = dataclasses.field(default_factory=list)
    """(t, env, observation) for every truncation: the episode's true last observation."""
    sample_time_s: float = 0.0
    """Seconds the runner spent producing this fragment (its busy time)."""
    num_stale_episodes: int = 0
    """Episodes acted on a client's side and dropped for a policy lag over the limit."""
    agent_returns: dict[str, list[float]] = dataclasses.field(default_factory=dict)
    """Multi-agent: each agent's return in every episode finished inside this fragment
    (``episode_returns`` holds their sum per episode)."""
    connector_delta: Any = None
    """What the runner's connectors (observation statistics) learned while sampling this
    fragment; the driver merges it into its copy (None: the runner has no connectors)."""
    episode_metrics: list[dict[str, float]] = dataclasses.field(default_factory=list)
    """Per finished episode, the metrics of ``info_metrics`` and the callbacks'
    ``episode.metrics`` (rl/callbacks.py; empty when there are none)."""


@dataclasses.dataclass
class UpdateResult:
    """What a learner (or the whole group) returns from ``update``."""

    metrics: dict[str, float]
    """Averaged over gradient steps and learners (``losses/*``, ``learner/*``)."""
    per_row: dict[str, np.ndarray] = dataclasses.field(default_factory=dict)
    """Outputs per batch row, e.g. DQN's ``td_abs`` for new priorities, for learners whose
    minibatches keep the row order (each row used once). A learner returns them as
    (gradient steps, its rows per step); the group returns them flat, in the batch's order."""


class Runner(Protocol):
    """An env runner (control) or a generator runner (LM): the driver sees only this."""

    def sample(self) -> Fragment: ...

    def set_weights(self, weights: Weights, version: int, connector_state: Any = None) -> None:
        """Load weights ``version``; ``connector_state`` is the driver's connector
        statistics published with them (None: the runner keeps its own, or has none)."""
        ...

    def evaluate(self, num_episodes: int) -> dict[str, float]:
        """Greedy (deterministic) performance: ``evaluation/*`` metrics."""
        ...

    def ping(self) -> bool:
        """True: a restarted runner answers (connector statistics travel in each
        ``Fragment.connector_delta``, not through a call)."""
        ...

    def stop(self) -> None: ...


class RunnerFactory(Protocol):
    """Picklable: ``factory(index)`` builds runner ``index`` in whichever process calls it
    (remote actors build their own). Resolving the env happens once, in its constructor."""

    module_spec: Any
    """What the learners build (``module_spec.build()``)."""
    config: Any
    """The run's config with the fields it left None filled in from the env's spaces."""
    family: str | None
    """The task family those defaults came from (rl/spaces.py ``FAMILIES``), or None."""
    defaults: dict[str, Any]
    """The fields so filled, and their values."""

    def __call__(self, index: int) -> Runner: ...

    def evaluation_runner(self, num_episodes: int) -> Runner:
        """A runner apart from the fleet (own seeds) for ``evaluate()``."""
        ...

    def make_connector(self) -> Any:
        """The driver-side copy of the runners' connector state (merges their deltas,
        is checkpointed), or None."""
        ...


class LearnerProtocol(Protocol):
    def update(self, batch: SampleBatch, *, env_steps: int) -> UpdateResult: ...

    def get_weights(self) -> Weights: ...

    def set_weights(self, weights: Weights) -> None: ...

    def get_state(self) -> dict[str, Any]: ...

    def set_state(self, state: dict[str, Any]) -> None: ...

"""The contract between the driver, the env runners and the learners. Read this first.

    driver (rl/algorithm.py)                      knows no algorithm and no env kind
      |  factory = RunnerFactory(config, ...)     one picklable factory per run
      |  runners = [factory(i) for i in N]        in this process or as Ray actors
      |  fragment = runner.sample()               -> Fragment, stamped with its weights version
      |  batch = algorithm.make_batch(fragments)  postprocessing (GAE, replay, ...)
      |  result = learner_group.update(batch, env_steps=...)   -> UpdateResult
      |  runner.set_weights(weights, version)     through the object store: put once

**Batches.** A batch is a dict of (nested) numpy arrays (:data:`SampleBatch`). A runner's
fragment is time-major, ``(T, B, ...)``; what reaches a learner is whatever the algorithm
builds from fragments: rows ``(N, ...)`` for PPO, DQN and LM post-training, time-major
``(T, B, ...)`` for IMPALA. Every column is documented where it is made: control fragments
in :mod:`rlfleet.rl.env_runner` (obs, actions, rewards, terminated, truncated, is_first,
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

Weights = dict[str, np.ndarray]
"""A module's state dict as CPU numpy arrays (stored once in the object store)."""


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

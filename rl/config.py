"""The shared base of every algorithm's typed config.

Checked at construction (``__post_init__``), with errors that quote the numbers; loadable
from a dict or YAML; an unknown key is an error naming the closest valid key.
"""

from __future__ import annotations

import dataclasses
import math
import os
import typing
from typing import Any, ClassVar

import yaml
from gymnasium import spaces

# ConfigError and closest are imported from here across the package
from rlfleet.rl.config_values import ConfigError, closest, coerce  # noqa: F401


DEFAULT_LOGGERS = ("jsonl", "csv", "tensorboard")
"""What a run writes unless ``log`` says otherwise."""


@dataclasses.dataclass
class AlgorithmConfig:
    """Settings shared by all algorithms. Subclasses add theirs and set ``algo_name``."""

    algo_name: ClassVar[str] = "base"
    renamed: ClassVar[dict[str, str]] = {}
    """Old key -> its new name: a config that still uses one is told the new name."""
    action_space_types: ClassVar[tuple[type, ...]] = (spaces.Box, spaces.Discrete, spaces.MultiDiscrete, spaces.Dict, spaces.Tuple)
    """Action spaces the algorithm can act in (the module may narrow the leaves further)."""

    # --- environment ---
    env: Any = None
    """A gymnasium id, a registered name, an ``Env`` subclass, or ``creator(env_config)``."""
    env_config: dict = dataclasses.field(default_factory=dict)
    """Keyword arguments for the env (``gymnasium.make(id, **env_config)``)."""
    seed: int = 0
    """Seeds torch, numpy and every env; local runs are reproducible with it."""
    user_modules: list[str] = dataclasses.field(default_factory=list)
    """Your own modules (import names or ``.py`` paths), imported before the env is
    resolved and shipped to every Ray worker: envs registered in them work on remote
    runners, from any directory and on a cluster (``--import``)."""

    # --- rollouts ---
    num_env_runners: int = 0
    """Remote runner actors (Ray); 0 samples in this process."""
    num_cpus_per_runner: float = 1.0
    """CPUs Ray reserves for each runner actor."""
    sample_timeout_s: float = 60.0
    """A runner that has not returned its fragment by then is restarted."""
    max_consecutive_runner_failures: int = 3
    """Stop the run after this many iterations in a row with a failed runner."""
    restart_timeout_s: float = 60.0
    """A restarted runner not placed and answering within this (its node lost, the rest
    of the cluster full) is given up: the run goes on with fewer, and stops with none."""
    requests_per_runner: int = 1
    """Asynchronous sampling (IMPALA, ``async_rollouts``): sample requests queued on each
    runner. 2 keeps a runner sampling while the driver learns, at up to one more weights
    version of lag."""
    weight_sync_timeout_s: float | None = None
    """A deadline for each synchronous weight broadcast: a runner that has not taken the
    new weights by then ends the run with one line naming it. None: such a runner is
    restarted at its next sample (``sample_timeout_s``). Asynchronous runners (IMPALA,
    ``async_rollouts``) take new weights with their next request, which
    ``sample_timeout_s`` bounds."""

    # --- learning ---
    lr: float = 3e-4
    """Adam learning rate (the start value when ``lr_schedule`` is set)."""
    lr_schedule: list | None = None
    """Piecewise-linear [[env_step, lr], ...]; None keeps ``lr``."""
    grad_clip: float | None = 0.5
    """Clip the global gradient norm to this; None disables."""
    weight_decay: float = 0.0
    """Decoupled weight decay (AdamW, Loshchilov & Hutter 2019); 0 is plain Adam."""
    device: str = "auto"
    """Learner device: ``auto`` (CUDA when present), ``cpu``, ``cuda``, ``cuda:1``."""
    num_learners: int = 0
    """Learner actors (Ray) updating data-parallel with torch.distributed; 0 learns here."""
    num_gpus_per_learner: float = 0.0
    """GPUs Ray reserves for each learner actor (nccl when > 0, else gloo)."""
    address: str | None = None
    """Ray cluster to join (``auto`` or ``host:port``); None starts an embedded instance."""
    ray_dashboard: bool = False
    """The embedded instance also runs Ray's dashboard, its API server (``ray list``, job
    submission), the autoscaler monitor and the log monitor; off, it starts only what
    training uses, about 180 MiB and 1 s less (runner output comes with their replies).
    No effect with ``address``."""
    torch_threads: int = 1
    """Torch CPU threads in this process; small policies run fastest on one."""

    # --- evaluation and logging ---
    evaluation_num_episodes: int = 10
    """Episodes per ``evaluate()`` call (greedy actions)."""
    evaluation_interval: int = 0
    """Evaluate every N iterations inside ``train()``: the ``evaluation/*`` metrics join
    that iteration's progress row (0: only when asked)."""
    metrics_smoothing_episodes: int = 100
    """``episode_return_mean`` is over this many last episodes."""
    logdir: str | None = None
    """Where progress.jsonl and TensorBoard events go; None writes no files."""
    log_to_console: bool = False
    """Print one progress line per iteration (a live bar with an ETA on a terminal)."""
    log: list[str] = dataclasses.field(default_factory=lambda: list(DEFAULT_LOGGERS))
    """Where the progress rows go besides ``progress.jsonl`` (always written): ``csv``,
    ``tensorboard``, ``mlflow``, ``wandb`` (the last two are extras; rl/loggers.py)."""
    callbacks: list = dataclasses.field(default_factory=list)
    """Hooks into the run: ``rl/callbacks.py`` Callbacks subclasses, as classes or as
    ``module:Class`` names (a YAML file's form; the module ships to Ray runners like
    ``--import``)."""
    info_metrics: dict = dataclasses.field(default_factory=dict)
    """Env ``info`` keys aggregated per episode, ``{key: last|sum|mean|max|min}``; each
    reaches the progress rows as ``custom/<key>``, the mean over the last
    ``metrics_smoothing_episodes`` episodes that reported it."""
    video_every: int = 0
    """Record one greedy evaluation episode every N iterations into ``LOGDIR/videos``
    (the ``video`` extra; 0: never)."""
    keep_checkpoints: int = 0
    """Besides ``checkpoint/`` (the latest), keep the last N checkpoints as
    ``checkpoints/iteration-<N>/`` (0: only the latest)."""
    checkpoint_best: bool = False
    """Also keep ``checkpoint_best/``, rewritten whenever the evaluation return beats its
    best so far (needs ``evaluation_interval``)."""

    def __post_init__(self) -> None:
        # Every field checked against its type, whichever way it came (Python, YAML, --set):
        # a list where a number is meant, NaN, a string for a mapping, ... is one line here.
        hints = typing.get_type_hints(type(self))
        for f in dataclasses.fields(self):
            if f.name != "lr_schedule":
                setattr(self, f.name, coerce(getattr(self, f.name), hints[f.name], f.name))
        if self.logdir:  # learner actors and runners may run in another directory
            self.logdir = os.path.abspath(self.logdir)
        if self.lr_schedule is not None:
            # One canonical form, [[int step, float lr], ...], whether it came from Python,
            # YAML ('1e-3' is a string there) or the command line.
            try:
                self.lr_schedule = [[coerce(t, int, "lr_schedule"), coerce(v, float, "lr_schedule")]
                                    for t, v in self.lr_schedule]
            except (TypeError, ValueError):
                raise ConfigError(f"lr_schedule must be [[env_step, lr], ...], got {self.lr_schedule}") from None
        self.validate()

    def require_positive(self, *names: str) -> None:
        """Each named field is > 0 (None, a field left to be derived, passes)."""
        for name in names:
            if getattr(self, name) is not None and getattr(self, name) <= 0:
                raise ConfigError(f"{name} must be > 0, got {getattr(self, name)}")

    def require_non_negative(self, *names: str) -> None:
        for name in names:
            if getattr(self, name) is not None and getattr(self, name) < 0:
                raise ConfigError(f"{name} must be >= 0, got {getattr(self, name)}")

    def minibatch_rows(self, steps: int) -> int:
        """The rows of a minibatch of ``steps`` env steps: the steps themselves, or with
        memory (control configs) whole sequences, ``steps // max_seq_len`` (at least one)."""
        return max(1, steps // self.max_seq_len) if getattr(self, "memory", None) else steps

    @property
    def num_runners(self) -> int:
        """Runners that sample: the ``num_env_runners`` actors, or one in this process when
        it is 0 (the one place that rule lives)."""
        return max(1, self.num_env_runners)

    def validate(self) -> None:
        self.require_non_negative("evaluation_interval", "video_every", "keep_checkpoints")
        from rlfleet.rl.callbacks import check_callbacks, check_info_metrics
        from rlfleet.rl.loggers import check_loggers

        self.log = check_loggers(self.log)
        check_callbacks(self.callbacks)
        check_info_metrics(self.info_metrics)
        if self.checkpoint_best and not self.evaluation_interval:
            raise ConfigError("checkpoint_best keeps the checkpoint with the best evaluation return: set "
                              "evaluation_interval (e.g. 10) too")
        self.require_positive("weight_sync_timeout_s", "requests_per_runner")
        self.require_positive("evaluation_num_episodes", "metrics_smoothing_episodes", "torch_threads",
                              "sample_timeout_s", "max_consecutive_runner_failures", "num_cpus_per_runner",
                              "restart_timeout_s")
        self.require_non_negative("num_env_runners", "num_learners", "num_gpus_per_learner", "lr", "weight_decay", "seed")
        if self.address is not None and self.num_env_runners == 0 and self.num_learners == 0:
            raise ConfigError(f"address {self.address!r} given, but nothing runs on a cluster: "
                              "set num_env_runners or num_learners > 0 (or leave address out)")
        if self.lr_schedule is not None:
            pts = self.lr_schedule
            if not pts or any(len(p) != 2 for p in pts) or any(b[0] <= a[0] for a, b in zip(pts, pts[1:])):
                raise ConfigError(f"lr_schedule must be [[env_step, lr], ...] with rising steps, got {pts}")
            if any(p[1] < 0 for p in pts):
                raise ConfigError(f"lr_schedule learning rates must be >= 0, got {pts}")

    # --- construction from dicts and YAML ---
    @classmethod
    def field_names(cls) -> list[str]:
        return [f.name for f in dataclasses.fields(cls)]

    @classmethod
    def from_dict(cls, values: dict[str, Any], *, source: str = "config") -> "AlgorithmConfig":
        return cls().updated(values, source=source)

    def updated(self, values: dict[str, Any], *, source: str = "config", after: bool = True) -> "AlgorithmConfig":
        """A copy with ``values`` applied and validated; unknown keys name the closest one.
        ``after=False``: a layer that only fills fields no layer set (the family defaults),
        so it counts as coming before them all and the lr-over-schedule rule is not applied."""
        names = self.field_names()
        for key in values:
            if key in self.renamed:
                raise ConfigError(f"{source}: key {key!r} of {self.algo_name} is now {self.renamed[key]!r}")
            if key not in names:
                raise ConfigError(f"{source}: unknown key {key!r} for {self.algo_name}{closest(key, names)}")
        try:  # __post_init__ checks every field; a value's error is named with its source
            layer = lr_over_schedule(self.lr_schedule, values, source=source) if after else values
            new = dataclasses.replace(self, **layer)
        except ConfigError as e:
            raise ConfigError(f"{source}: {e}") from None
        # Each key remembers the layer its value came from (``train.py --print-config``).
        new._sources = {**getattr(self, "_sources", {}), **dict.fromkeys(values, source)}
        if layer is not values:
            new._sources["lr_schedule"] = scaled_by(source)
        return new

    @classmethod
    def layered(cls, layers: typing.Iterable[tuple[str, dict[str, Any]]]) -> "AlgorithmConfig":
        """The one merge: the dataclass's defaults, then each ``(source, values)`` layer in
        order (a tuned example, the command-line flags, ``--set``); a later layer wins, and
        each key remembers the layer it came from. The family defaults come in where the
        env's spaces are known (the runner factory, ``with_family_defaults``); they fill
        only fields no layer set, so they act as the layer right after the defaults."""
        config = cls()
        for source, values in layers:
            config = config.updated(values, source=source)
        return config

    def source_of(self, key: str) -> str:
        """Where ``key``'s value came from: a tuned example's path, ``command line``,
        ``--set``, ``defaults for <family>``, or ``default`` (the dataclass's own)."""
        return getattr(self, "_sources", {}).get(key, "default")

    @classmethod
    def from_yaml(cls, path: str) -> "AlgorithmConfig":
        with open(path, encoding="utf-8") as f:
            return cls.from_dict(yaml.safe_load(f) or {}, source=path)

    def to_dict(self) -> dict[str, Any]:
        """Settings as plain values (an env given as a class or callable is kept by name)."""
        out = {}
        for f in dataclasses.fields(self):
            value = getattr(self, f.name)
            if f.name == "env" and not isinstance(value, (str, type(None))):
                value = getattr(value, "__name__", repr(value))
            if f.name == "callbacks":  # a class given in Python is kept by its import name
                value = [c if isinstance(c, str) else f"{c.__module__}:{c.__qualname__}" for c in value]
            out[f.name] = list(value) if isinstance(value, tuple) else value
        return out

    def algorithm_class(self) -> type:
        raise NotImplementedError(f"{type(self).__name__} does not name its algorithm class")

    def runtime_request(self) -> tuple[str, dict[str, Any]]:
        """The runtime this config runs on, as ``make_runtime`` arguments: Ray when anything
        is remote (asked for exactly the CPUs and GPUs the config needs, the user's modules
        shipped to its workers), else the in-process backend."""
        if self.num_env_runners == 0 and self.num_learners == 0:
            return "local", {}
        from rlfleet.envs import import_user_module, shippable, user_code_modules

        cpus = self.num_env_runners * self.num_cpus_per_runner + self.num_learners
        gpus = self.num_learners * self.num_gpus_per_learner
        shipped = [module for module in map(import_user_module, self.user_modules) if shippable(module)]
        # and the module a registered creator or an env class comes from, when it is the user's own
        shipped += [m for m in user_code_modules(self.env) if m not in shipped]
        # and the modules of the callbacks, whose episode hooks run in the runners
        from rlfleet.rl.callbacks import callback_classes

        for cls in callback_classes(self.callbacks):
            shipped += [m for m in user_code_modules(cls) if m not in shipped]
        return "ray", {"address": self.address, "num_cpus": max(1, math.ceil(cpus)), "num_gpus": math.ceil(gpus),
                       "py_modules": shipped,
                       "include_dashboard": self.ray_dashboard, "lean": not self.ray_dashboard}

    def build(self) -> Any:
        """Build the algorithm this config describes. Ray, when the config needs it,
        starts while the algorithm's modules are imported and built (``prestarted``)."""
        from rlfleet.runtime import prestarted

        kind, options = self.runtime_request()
        with prestarted(kind, **options):
            return self.algorithm_class()(self)


@dataclasses.dataclass
class ControlConfig(AlgorithmConfig):
    """Settings of control RL (gymnasium envs and MLP/CNN policies): PPO, DQN, IMPALA."""

    multi_agent: ClassVar[bool] = True
    """Whether the algorithm trains multi-agent envs (``pettingzoo:<module>``)."""
    external_max_lag: ClassVar[int | None] = None
    """``env: external`` with client-side inference: reports more weights versions behind
    than this are dropped and counted (None: the algorithm learns from any lag, V-trace
    and replay correct for it); ``env_config.max_lag`` overrides it."""

    # --- env runners ---
    env_error_retries: int = 3
    """A sub-env that raises is recreated (its episode dropped) up to this many times in a
    row before the error stops the run; 0 lets the first error through."""
    max_failed_episodes: int = 20
    """A sub-env whose episodes end in a simulator error this many times in a row, none
    finishing in between, stops the run (an env that crashes in every episode)."""
    num_envs_per_runner: int | None = None
    """Envs in each runner's vector env, stepped as one batch through the policy (None:
    chosen from the spaces, see ``family_defaults``)."""
    rollout_fragment_length: int | None = None
    """Steps per env per sample call (None: chosen from the spaces)."""
    vectorize_mode: str = "sync"
    """``sync`` steps envs in the runner's process, ``async`` in a subprocess each."""
    normalize_obs: bool | None = None
    """Running mean/std normalisation of float observations (a checkpointed connector;
    None: on for continuous control)."""
    normalize_rewards: bool | None = None
    """Divide rewards by the running std of the discounted return, clipped to +-10 (as
    SB3's VecNormalize does; checkpointed; metrics report raw returns; None: on for
    continuous control)."""

    # --- model ---
    hidden_sizes: tuple[int, ...] = (64, 64)
    """Widths of the policy and value MLPs."""
    activation: str = "tanh"
    """One of tanh, relu, elu, silu."""
    shared_encoder: bool = False
    """Policy and value share the MLP (images always share the CNN)."""
    policy_mapping: dict[str, str] | None = None
    """Multi-agent: agent id (or fnmatch pattern, ``agent_*``) -> policy id; agents that
    match none share the policy ``default``. Agents mapped to one policy share its weights."""
    policies_to_train: list[str] | None = None
    """Multi-agent: the policies that learn (None: all); the others act with their weights
    as they are (a frozen opponent)."""
    policy_snapshots: dict[str, str] | None = None
    """Multi-agent self-play against past selves: ``{opponent: main}`` copies policy
    ``main``'s weights into ``opponent`` as training starts and after every
    ``snapshot_interval`` iterations (the runners get the copy with the next iteration's
    broadcast); ``opponent`` never learns (it is left out of ``policies_to_train``)."""
    snapshot_interval: int = 10
    """Iterations between two ``policy_snapshots`` copies."""
    evaluation_policy_mapping: dict[str, str] | None = None
    """Multi-agent: patterns tried before ``policy_mapping`` in evaluation episodes
    (``{player_2: random}`` plays the trained policy against a uniformly random legal
    opponent)."""
    encode_action_mask: bool = False
    """Feed an observation's ``action_mask`` to the encoder too; it masks the policy (or
    the Q-values) either way (rl/core.py, "Action masks")."""
    memory: str | None = None
    """A recurrent core after the encoder, ``gru`` or ``lstm`` (None: none). Off by
    default, since spaces cannot tell that a task needs it: turn it on when one
    observation is not the state (a partially observed task, a velocity left out)."""
    memory_size: int = 128
    """Units of the recurrent core."""
    max_seq_len: int = 32
    """With memory: training runs on chunks of this many steps, each from the state the
    runner stored at its start; ``minibatch_size`` then holds ``minibatch_size //
    max_seq_len`` whole chunks (at least one)."""
    burn_in: int = 0
    """With memory: steps before each chunk replayed only to refresh its start state (no
    loss on them), for a state stored under older weights."""
    supports_memory: ClassVar[bool] = False
    """Whether the algorithm trains recurrent policies (``memory``)."""

    # --- returns ---
    gamma: float = 0.99
    """Discount factor."""
    reward_scale: float = 1.0
    """Rewards are multiplied by this before learning (metrics report raw returns)."""

    # --- defaults chosen from the spaces ---
    family_defaults: ClassVar[dict[str, dict[str, Any]]] = {
        # Classic control: short fragments, many small updates (CartPole, Acrobot, grids).
        "discrete": {"num_envs_per_runner": 8, "rollout_fragment_length": 32,
                     "normalize_obs": False, "normalize_rewards": False},
        # Locomotion: long fragments, observations and returns normalised (SB3's PPO
        # batch of 2048 steps, CleanRL's and rl-zoo's normalisation for MuJoCo).
        "continuous": {"num_envs_per_runner": 8, "rollout_fragment_length": 256,
                       "normalize_obs": True, "normalize_rewards": True},
        # Pixels: uint8 frames are scaled by the encoder, never normalised by statistics.
        "image": {"num_envs_per_runner": 8, "rollout_fragment_length": 128,
                  "normalize_obs": False, "normalize_rewards": False},
    }
    """Per task family (``rl/spaces.py`` ``space_family``), the value of each field left
    None; a subclass extends it with its own fields."""

    def with_family_defaults(self, family: str, *, connectors: bool = True) -> tuple["ControlConfig", dict[str, Any]]:
        """This config with every field left None filled from ``family``'s defaults, and
        what was filled. ``connectors=False`` (multi-agent and external envs, whose
        runners have no normalisers) keeps normalisation off unless asked for."""
        table = dict(self.family_defaults[family])
        if not connectors:
            table.update(normalize_obs=False, normalize_rewards=False)
        picked = {key: value for key, value in table.items() if getattr(self, key) is None}
        return (self.updated(picked, source=f"defaults for {family}", after=False) if picked else self), picked

    def validate(self) -> None:
        super().validate()
        if not self.multi_agent and isinstance(self.env, str) and self.env.startswith("pettingzoo:"):
            raise ConfigError(f"{self.algo_name} does not train multi-agent envs yet ({self.env}); use ppo or impala")
        self.require_positive("num_envs_per_runner", "rollout_fragment_length", "max_failed_episodes",
                              "snapshot_interval")
        self.require_non_negative("env_error_retries")
        if not 0.0 <= self.gamma <= 1.0:
            raise ConfigError(f"gamma must be in [0, 1], got {self.gamma}")
        if self.vectorize_mode not in ("sync", "async"):
            raise ConfigError(f"vectorize_mode must be 'sync' or 'async', got {self.vectorize_mode!r}")
        if self.activation not in ("tanh", "relu", "elu", "silu"):
            raise ConfigError(f"activation must be one of tanh, relu, elu, silu; got {self.activation!r}")
        if self.memory is not None:
            if self.memory not in ("gru", "lstm"):
                raise ConfigError(f"memory must be 'gru', 'lstm' or null; got {self.memory!r}{closest(self.memory, ('gru', 'lstm'))}")
            if not self.supports_memory:
                raise ConfigError(f"memory is not built for {self.algo_name} yet; use ppo, impala or dqn, or leave memory out")
        self.require_positive("memory_size", "max_seq_len")
        if not 0 <= self.burn_in < self.max_seq_len:
            raise ConfigError(f"burn_in must be in [0, max_seq_len {self.max_seq_len}), got {self.burn_in}")


def lr_over_schedule(schedule: list | None, values: dict[str, Any], *, source: str) -> dict[str, Any]:
    """The one rule for an ``lr`` given over an ``lr_schedule`` that an earlier layer set
    and this one keeps (``--set lr=`` on a tuned example, a searched ``lr``): the schedule,
    not ``lr``, sets the learner's rate, so ``values`` come back with the whole schedule
    scaled to start at ``lr``, keeping its shape (a decay a tuned example relies on stays).
    A schedule that starts at 0 (a warm-up) has no scale: the layer is told to set
    ``lr_schedule`` instead. Any other ``values`` come back as they are."""
    if "lr" not in values or "lr_schedule" in values or not schedule:
        return values
    lr = coerce(values["lr"], float, "lr")
    start = float(schedule[0][1])
    if start <= 0:
        raise ConfigError(f"lr={values['lr']}: the lr_schedule starts at 0, so it cannot be scaled to start at "
                          f"lr {lr}; set lr_schedule instead")
    return {**values, "lr_schedule": [[t, float(v) * lr / start] for t, v in schedule]}


def scaled_by(source: str) -> str:
    """The source of an ``lr_schedule`` that ``source``'s ``lr`` scaled."""
    return f"{source} (lr scales the schedule)"

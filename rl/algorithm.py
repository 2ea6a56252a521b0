"""The driver: one ``train()`` call is one iteration (sample, learn, broadcast, log)."""

from __future__ import annotations

import abc
import collections
import random
import time
from typing import Any, Callable, Sequence

import numpy as np
import torch

from rlfleet.envs import EnvCreator, import_user_module
from rlfleet.rl.callbacks import CUSTOM, EpisodeHooks, load_callbacks, overrides
from rlfleet.rl import checkpoint_state
from rlfleet.rl.config import AlgorithmConfig, ConfigError
from rlfleet.rl.interrupts import deferred_interrupts
from rlfleet.rl.connectors import RewardNormalizer
from rlfleet.rl.core import Fragment, Runner, RunnerFactory, Weights
from rlfleet.rl.runners.env_runner_group import EnvRunnerGroup
from rlfleet.rl.learner import Learner, LearnerFactory, LearnerGroup, MultiLearnerGroup
from rlfleet.rl.metrics import MetricsLogger
from rlfleet.rl.spaces import FAMILIES
from rlfleet.runtime import Runtime, make_runtime



class Algorithm(abc.ABC):
    """The driver. It knows no algorithm and no env kind: a subclass names its config,
    learner and runner-factory classes and writes ``training_step``; what differs between
    control RL and LM post-training comes through the runner factory (rl/core.py)."""

    config_class: type[AlgorithmConfig]
    """The algorithm's config dataclass (for :meth:`from_checkpoint`)."""
    learner_class: type[Learner]
    """The algorithm's Learner subclass, built as ``learner_class(module_spec=, config=)``."""
    runner_factory_class: Callable[..., RunnerFactory]
    """Built as ``runner_factory_class(config, adapt_spec=self.adapt_module_spec)``."""

    def __init_subclass__(cls, **kwargs: Any) -> None:
        # The config handed to __init__ still has the fields left to the spaces (None);
        # a subclass constructor reading it crashed DQN on every env without a tuned
        # example (issue 30). Subclasses build their state in setup(), from self.config.
        super().__init_subclass__(**kwargs)
        if "__init__" in cls.__dict__:
            raise TypeError(f"{cls.__name__} defines __init__; build its state in setup(), which runs once "
                            "self.config has every default resolved")

    def __init__(self, config: AlgorithmConfig) -> None:
        self.config = config  # validated when it was built; resolved by the runner factory below
        torch.set_num_threads(config.torch_threads)
        random.seed(config.seed)
        np.random.seed(config.seed)
        torch.manual_seed(config.seed)

        marks = [time.perf_counter()]  # start-up, phase by phase (``startup/*`` in the first progress row)
        self.user_modules = [import_user_module(m) for m in config.user_modules]  # registers their envs
        self.callbacks = load_callbacks(config.callbacks)  # the driver's own instances (runners build theirs)
        self.runner_factory = type(self).runner_factory_class(config, adapt_spec=self.adapt_module_spec)
        if EpisodeHooks.wanted(self.callbacks, config.info_metrics) and not getattr(self.runner_factory,
                                                                                    "episode_hooks", False):
            raise ConfigError(f"info_metrics and the callbacks' episode hooks are built for gymnasium envs only, not "
                              f"{getattr(self.runner_factory, 'kind', 'text')} envs yet; leave them out")
        self.video_recorder = self.make_video_recorder(config)  # checked now: no extra or no frames fail fast
        # the fields the config left None are chosen from the env's spaces from here on
        self.config = config = self.runner_factory.config
        self.module_spec = self.runner_factory.module_spec
        self.connector = self.runner_factory.make_connector()
        self.reward_normalizer = (RewardNormalizer(config.gamma) if getattr(config, "normalize_rewards", False)
                                  else None)
        marks.append(time.perf_counter())
        self.runtime = self.make_runtime()
        marks.append(time.perf_counter())
        self.learner_group = self.make_learner_group(self.module_spec)
        marks.append(time.perf_counter())
        # num_env_runners=0 samples in this process, even when the learners are remote.
        self.env_runner_group = EnvRunnerGroup(
            self.runtime if config.num_env_runners > 0 else make_runtime("local"),
            self.runner_factory,
            config.num_runners,
            num_cpus_per_runner=config.num_cpus_per_runner,
            sample_timeout_s=config.sample_timeout_s,
            max_consecutive_failures=config.max_consecutive_runner_failures,
            restart_timeout_s=config.restart_timeout_s,
            weight_sync_timeout_s=config.weight_sync_timeout_s,
            requests_per_runner=config.requests_per_runner,
        )
        self.eval_runner: Runner | None = None
        self.logger = MetricsLogger(config.logdir, console=config.log_to_console, log=config.log,
                                    config=config.to_dict())
        self.defaults = self.runner_factory.defaults
        if self.defaults and config.log_to_console:
            print(self.defaults_line(), flush=True)

        self.iteration = 0
        self.env_steps = 0
        self.episodes = 0
        self.num_env_errors = 0
        self.num_stale_episodes = 0
        self.runner_env_steps: dict[int, int] = {}
        self.runner_busy_s = 0.0
        self.weights_version = 0
        self.policy_lag: list[int] = []
        self.agent_returns: dict[str, collections.deque[float]] = {}  # multi-agent: per agent
        self.episode_returns: collections.deque[float] = collections.deque(maxlen=config.metrics_smoothing_episodes)
        self.episode_lengths: collections.deque[int] = collections.deque(maxlen=config.metrics_smoothing_episodes)
        # per-episode metrics of info_metrics and callbacks, key -> the last episodes' values
        self.custom_metrics: dict[str, collections.deque[float]] = {}
        self.last_result: dict[str, Any] = {}
        # The best episode_return_mean over a full window so far: a run that learned and
        # then collapsed shows it beside the final mean (issue 31).
        self.best_return_mean = float("nan")
        self.best_evaluation_return = float("nan")  # what checkpoint_best compares (scripts/tools/experiment.py)
        self.time_before_restore = 0.0
        self.started = time.perf_counter()
        self.last_logged: dict[str, Any] | None = None  # what a checkpoint holds while an iteration runs
        try:
            self.setup()
        except BaseException:
            self.stop()  # the runtime and actors started above end with the failed build
            raise
        self.take_snapshots()
        self.sync_weights()
        marks.append(time.perf_counter())
        # env probe and spaces; the runtime (waiting for the rest of ray.init, which
        # config.build() began before importing this module); learners built; runner actors
        # up with their first weights (what train.py adds: its imports and config, and the
        # algorithm's imports, torch's among them)
        self.init_started = marks[0]
        self.startup: dict[str, float] = {
            f"startup/{name}_s": b - a for name, a, b in zip(("env_probe", "runtime", "learners", "runners"),
                                                             marks, marks[1:])}

    def defaults_line(self) -> str:
        """What the spaces chose for the fields the config left open, in one line."""
        chosen = ", ".join(f"{k}={v}" for k, v in self.defaults.items())
        return (f"{self.config.algo_name} defaults for {FAMILIES[self.runner_factory.family]} "
                f"(set any of them to override): {chosen}")

    def make_learner_group(self, spec: Any) -> LearnerGroup | MultiLearnerGroup:
        """One learner group, or one per policy when the factory gives a spec per policy
        id (multi-agent)."""
        c = self.config
        if isinstance(spec, dict):
            snapshots = getattr(c, "policy_snapshots", None) or {}
            trainable = getattr(c, "policies_to_train", None) or sorted(set(spec) - set(snapshots))
            return MultiLearnerGroup({pid: self.make_learner_group(s) for pid, s in spec.items()}, trainable)
        return LearnerGroup(self.runtime, LearnerFactory(self.learner_class, module_spec=spec, config=c),
                            c.num_learners, num_gpus_per_learner=c.num_gpus_per_learner)

    # -- what an algorithm may adapt ------------------------------------------------------
    def setup(self) -> None:
        """The algorithm's own state (a replay buffer, queues, counters), built once
        ``self.config`` is resolved (every field left to the spaces filled in) and the
        learners and runners exist, before the first broadcast. Algorithms build their state
        here, never in ``__init__``."""

    def adapt_module_spec(self, spec: Any) -> Any:
        """The module this algorithm trains, from the runner factory's default spec for
        the env (an actor-critic, or a causal LM); override to refuse or change it."""
        return spec

    def acting_weights(self, weights: Weights) -> Weights:
        """What the runners act with, from the learner's weights (DQN sets epsilon here)."""
        return weights

    def make_runtime(self) -> Runtime:
        """The runtime of ``config.runtime_request()`` (one ``config.build()`` may have
        started already)."""
        kind, options = self.config.runtime_request()
        return make_runtime(kind, **options)

    @abc.abstractmethod
    def training_step(self) -> dict[str, float]:
        """One iteration's work; returns the learner's metrics."""

    # -- building blocks for training_step ---------------------------------------------
    def sample(self) -> list[Fragment]:
        """Collect one fragment per runner and account for its steps and episodes."""
        fragments = self.env_runner_group.sample()
        self.record(fragments)
        return fragments

    def record(self, fragments: list[Fragment]) -> None:
        """Account for the steps, episodes, errors and policy lag of arrived fragments (and
        scale their rewards when ``normalize_rewards`` is on)."""
        for frag in fragments:
            if self.connector is not None and frag.connector_delta is not None:
                self.connector.merge_deltas([frag.connector_delta])
            if self.reward_normalizer is not None:
                b = frag.batch
                b["rewards"] = self.reward_normalizer(b["rewards"], b["terminated"] | b["truncated"], frag.runner_index)
            self.env_steps += frag.env_steps
            self.episodes += len(frag.episode_returns)
            self.episode_returns.extend(frag.episode_returns)
            self.episode_lengths.extend(frag.episode_lengths)
            self.policy_lag.append(self.weights_version - frag.weights_version)
            self.num_env_errors += frag.num_env_errors
            self.num_stale_episodes += frag.num_stale_episodes
            self.runner_env_steps[frag.runner_index] = self.runner_env_steps.get(frag.runner_index, 0) + frag.env_steps
            self.runner_busy_s += frag.sample_time_s
            for episode in frag.episode_metrics:
                for key, value in episode.items():
                    self.custom_metrics.setdefault(
                        key, collections.deque(maxlen=self.config.metrics_smoothing_episodes)).append(value)
            for agent, returns in frag.agent_returns.items():
                self.agent_returns.setdefault(
                    agent, collections.deque(maxlen=self.config.metrics_smoothing_episodes)).extend(returns)

    def publish_weights(self) -> None:
        """A new weights version into the object store for asynchronous runners, which
        take it with their next request (nobody waits for it)."""
        self.weights_version += 1
        self.env_runner_group.publish_weights(self.acting_weights(self.learner_group.get_weights()),
                                              self.weights_version, self.connector_state())

    def sync_weights(self, new_version: bool = True) -> None:
        """Broadcast the learner's weights (put into the object store once, every runner
        gets the reference) with the connector statistics merged so far, so every runner
        normalises alike in the next iteration; ``new_version`` stamps them as a new version."""
        self.weights_version += int(new_version)
        self.env_runner_group.sync_weights(self.acting_weights(self.learner_group.get_weights()),
                                           self.weights_version, self.connector_state())

    def connector_state(self) -> Any:
        return self.connector.get_state() if self.connector is not None else None

    def take_snapshots(self) -> None:
        """Multi-agent self-play: copy each ``policy_snapshots`` source into its frozen
        copy (nothing when the config has none)."""
        copies = getattr(self.config, "policy_snapshots", None)
        if copies:
            self.learner_group.copy_weights(copies)

    # -- the public loop ---------------------------------------------------------------
    def train(self) -> dict[str, Any]:
        """Run one iteration; return a flat dict (the same keys as a progress.jsonl line).

        For a checkpoint an iteration happens whole or not at all: a Ctrl-C or SIGTERM
        waits for its end, and when it is cut anyway (a second Ctrl-C, a runner failure)
        ``get_state`` holds the counters of the last logged iteration, never a gap."""
        with deferred_interrupts("interrupted: stopping after this iteration (again to stop at once)"):
            self.last_logged = self.progress_state()
            result = self.iterate()
            self.last_logged = None
        return result

    def iterate(self) -> dict[str, Any]:
        """The iteration itself: the step, the counters and the progress row."""
        t0, steps0, busy0 = time.perf_counter(), self.env_steps, self.runner_busy_s
        if self.iteration and self.iteration % getattr(self.config, "snapshot_interval", 1) == 0:
            # before the step: its own broadcast (or IMPALA's next publish) carries the copy
            self.take_snapshots()
        metrics = self.training_step()
        interval = getattr(self.config, "evaluation_interval", 0)
        if interval and (self.iteration + 1) % interval == 0:
            metrics = {**metrics, **self.evaluate()}
        if self.video_recorder is not None and (self.iteration + 1) % self.config.video_every == 0:
            metrics = {**metrics, **self.record_video(self.iteration + 1)}
        self.iteration += 1
        dt = time.perf_counter() - t0
        lag = self.policy_lag or [0]
        window_full = len(self.episode_returns) == self.episode_returns.maxlen
        if window_full:  # (a NaN best compares False: the first full window sets it)
            mean = float(np.mean(self.episode_returns))
            self.best_return_mean = mean if not mean <= self.best_return_mean else self.best_return_mean
        result: dict[str, Any] = {
            "iteration": self.iteration,
            "env_steps": self.env_steps,
            "time_s": self.time_before_restore + time.perf_counter() - self.started,
            "episode_return_mean": float(np.mean(self.episode_returns)) if self.episode_returns else float("nan"),
            "episode_return_best": self.best_return_mean,
            "episode_return_max": float(np.max(self.episode_returns)) if self.episode_returns else float("nan"),
            "episode_return_min": float(np.min(self.episode_returns)) if self.episode_returns else float("nan"),
            "episode_len_mean": float(np.mean(self.episode_lengths)) if self.episode_lengths else float("nan"),
            "episodes_total": self.episodes,
            # A return target counts once the mean is over a full window: the first
            # episodes to end are the short ones, and their mean says little.
            "episode_window_full": window_full,
            "env_steps_per_s": (self.env_steps - steps0) / max(dt, 1e-9),
            # Share of the iteration the runners spent sampling (1 = never waiting on the learner).
            "runner_busy_fraction": (self.runner_busy_s - busy0) / max(dt * self.env_runner_group.size, 1e-9),
            "policy_lag_mean": float(np.mean(lag)),
            "policy_lag_max": int(np.max(lag)),
            "weights_version": self.weights_version,
            "weight_sync_s": self.env_runner_group.last_sync_s,
            "num_env_runner_restarts": self.env_runner_group.num_restarts,
            "num_env_runners_lost": self.env_runner_group.num_lost,
            "num_env_errors": self.num_env_errors,
            "num_stale_episodes": self.num_stale_episodes,
            "num_fragments_dropped": self.env_runner_group.num_dropped_requests,
            **{f"env_runners/{i}/env_steps": n for i, n in sorted(self.runner_env_steps.items())},
            **{f"agents/{a}/episode_return_mean": float(np.mean(r)) for a, r in sorted(self.agent_returns.items())},
            **{f"{CUSTOM}{k}": float(np.mean(v)) for k, v in sorted(self.custom_metrics.items())},
            **metrics,
        }
        if self.iteration == 1:  # the first iteration closes the start-up
            result.update({**self.startup, "startup/first_iteration_s": dt})
            if self.defaults:  # which defaults the spaces chose, and why
                result.update({"defaults/family": self.runner_factory.family,
                               **{f"defaults/{k}": v for k, v in self.defaults.items()}})
        self.policy_lag = []
        for callback in overrides(self.callbacks, "on_train_result"):
            callback.on_train_result(algorithm=self, result=result)
        self.logger.log(result)
        self.last_result = result
        return result

    def notify(self, hook: str, **kwargs: Any) -> None:
        """Call driver-side hook ``hook`` of every callback that overrides it."""
        for callback in overrides(self.callbacks, hook):
            getattr(callback, hook)(algorithm=self, **kwargs)

    def evaluate(self) -> dict[str, float]:
        """Greedy performance over ``evaluation_num_episodes`` on a runner apart from the
        fleet: ``evaluation/*`` metrics."""
        if self.eval_runner is None:
            self.eval_runner = self.runner_factory.evaluation_runner(self.config.evaluation_num_episodes)
        self.eval_runner.set_weights(self.acting_weights(self.learner_group.get_weights()), self.weights_version,
                                     self.connector_state())
        return self.eval_runner.evaluate(self.config.evaluation_num_episodes)

    # -- checkpoints -------------------------------------------------------------------
    def get_state(self) -> dict[str, Any]:
        """Everything a checkpoint holds (rl/checkpoint_state.py); subclasses add theirs."""
        return checkpoint_state.algorithm_state(self)

    def progress_state(self) -> dict[str, Any]:
        """The counters and episode windows a checkpoint holds, as they are now."""
        return checkpoint_state.progress_state(self)

    def checkpointed_progress(self) -> dict[str, Any]:
        """What a checkpoint written now holds of the progress: the last logged iteration's,
        also while an iteration runs or after one was cut."""
        return self.last_logged or self.progress_state()

    def save(self, path: str, *, copies: Sequence[str] = ()) -> str:
        """Write checkpoint directory ``path`` atomically (rl/checkpoint.py: safetensors,
        JSON, a model card), and the same checkpoint into each of ``copies``; returns ``path``."""
        written = checkpoint_state.save(self, path, tuple(copies))
        self.logger.checkpoint_saved(path)  # the trackers upload the last one when the run ends
        for directory in [path, *copies]:
            self.notify("on_checkpoint", path=directory)
        return written[0]

    def restore(self, path: str) -> None:
        """Continue from a checkpoint: weights, optimiser, connectors, counters and RNG.

        The simulators' own state is not in a checkpoint (a user's simulator need not be
        picklable): a restored run starts fresh episodes, so it continues the training
        exactly except for the episodes that were in progress.
        """
        checkpoint_state.restore(self, path)

    def restore_own_state(self, state: dict[str, Any], path: str) -> None:
        """What a subclass added to ``get_state`` (a replay buffer), from a loaded checkpoint."""

    @classmethod
    def from_checkpoint(cls, path: str, **overrides: Any) -> "Algorithm":
        """Rebuild the algorithm a checkpoint was saved from (its env must be a name), in
        this process and without writing logs, with its weights, connectors and counters:
        for inference and evaluation (nothing is unpickled; its optimisers stay fresh).
        ``overrides`` change config keys first."""
        return checkpoint_state.from_checkpoint(cls, path, overrides)

    def make_video_recorder(self, config: AlgorithmConfig) -> Any:
        """The recorder of ``video_every`` (rl/video.py), or None."""
        if not config.video_every:
            return None
        if not config.logdir:
            raise ConfigError("video_every writes into LOGDIR/videos: set logdir too")
        # what the recorder plays: a gymnasium env's creator (a multi-agent factory has a creator of
        # PettingZoo envs under the same name, external and text envs none)
        if not isinstance(getattr(self.runner_factory, "env_creator", None), EnvCreator):
            raise ConfigError(f"video_every is built for gymnasium envs only, not "
                              f"{getattr(self.runner_factory, 'kind', 'text')} envs yet; leave it 0")
        from rlfleet.rl.video import Recorder, VideoError

        try:
            return Recorder(self.runner_factory.env_creator)
        except VideoError as e:  # no imageio, or an env that draws no frames: bad input, one line
            raise ConfigError(f"video_every: {e}") from None

    def record_video(self, iteration: int) -> dict[str, float]:
        """One greedy episode into ``LOGDIR/videos/iteration_<N>.mp4``, handed to the loggers
        that take videos; its return and frame count as ``video/*`` metrics."""
        from rlfleet.rl.video import greedy_act

        act = greedy_act(self.module_spec, self.acting_weights(self.learner_group.get_weights()),
                         connector_state=self.connector_state(), seed=self.config.seed)
        path = f"{self.config.logdir}/videos/iteration_{iteration:06d}.mp4"
        video = self.video_recorder.record(act, path, seed=self.config.seed + 999_983)
        self.logger.video(video.path, iteration)
        return {"video/episode_return": video.episode_return, "video/frames": video.frames}

    def stop(self) -> None:
        """Release envs, actors and log files (after the callbacks' ``on_run_end``)."""
        try:
            self.notify("on_run_end", result=self.last_result)
        finally:
            self._release()

    def _release(self) -> None:
        self.env_runner_group.stop()
        if self.eval_runner is not None:
            self.eval_runner.stop()
        if self.video_recorder is not None:
            self.video_recorder.close()
        self.learner_group.stop()
        self.logger.close()
        self.runtime.shutdown()

    def __enter__(self) -> "Algorithm":
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

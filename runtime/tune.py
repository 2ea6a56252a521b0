"""Hyperparameter search on Ray Tune: the only code that knows Tune exists.

``run_search`` runs a function ``trial(params, reporter)`` once per sampled config under a
scheduler (FIFO, ASHA, PBT) and, optionally, Optuna's TPE; it knows nothing of what a
trial trains. Inside a trial, :class:`TrialReporter` is the trial's view of Tune: its id,
the checkpoint it should start from (a resume, or PBT's exploit), and ``report``.

Everything lives under the caller's directory: Tune's experiment state in ``tune/``, so
``resume=True`` continues an interrupted search (trials Tune had finished are not
started again; the caller's own per-trial record makes that hold also for trials that
finished after Tune's last state save).
"""

from __future__ import annotations

import dataclasses
import logging
import os
from typing import Any, Callable

EXPERIMENT_NAME = "tune"
SCHEDULERS = ("fifo", "asha", "pbt")


@dataclasses.dataclass
class TrialRecord:
    trial_id: str
    params: dict[str, Any]
    status: str  # ended (the caller's record says how), failed
    error: str | None


class TrialReporter:
    """A trial's side of Tune."""

    def __init__(self) -> None:
        from ray import tune

        # Tune logs every checkpoint it makes at INFO; our trial record lists them already
        logging.getLogger("ray.train").setLevel(logging.WARNING)
        logging.getLogger("ray.tune").setLevel(logging.WARNING)
        self._tune = tune
        self.trial_id: str = tune.get_context().get_trial_id()

    def restored_checkpoint(self) -> str | None:
        """A local directory holding the checkpoint this trial continues from, or None."""
        checkpoint = self._tune.get_checkpoint()
        return checkpoint.to_directory() if checkpoint is not None else None

    def report(self, metrics: dict[str, Any], *, checkpoint_dir: str | None = None) -> None:
        """Report one iteration; with ``checkpoint_dir`` Tune keeps a copy of it (for PBT's
        exploit and for resuming the search)."""
        if checkpoint_dir is None:
            self._tune.report(metrics)
        else:
            self._tune.report(metrics, checkpoint=self._tune.Checkpoint.from_directory(checkpoint_dir))


def _domain(kind: str, args: tuple[Any, ...]) -> Any:
    from ray import tune

    if kind == "choice":
        return tune.choice(list(args))
    if kind == "grid":
        return tune.grid_search(list(args))
    return {"uniform": tune.uniform, "loguniform": tune.loguniform, "randint": tune.randint}[kind](*args)


class _Progress:
    """Tune callback -> one console line per finished trial and a live count."""

    def __new__(cls, on_event: Callable[[str, str, dict[str, Any], dict[str, Any] | None, str | None], None]) -> Any:
        from ray.tune import Callback

        class Progress(Callback):
            def on_trial_start(self, iteration: int, trials: list, trial: Any, **info: Any) -> None:
                on_event("start", trial.trial_id, dict(trial.config), None, None)

            def on_trial_complete(self, iteration: int, trials: list, trial: Any, **info: Any) -> None:
                on_event("done", trial.trial_id, dict(trial.config), trial.last_result, None)

            def on_trial_error(self, iteration: int, trials: list, trial: Any, **info: Any) -> None:
                on_event("failed", trial.trial_id, dict(trial.config), trial.last_result, _error_line(trial))

        return Progress()


def _error_line(trial: Any) -> str:
    path = getattr(trial, "error_file", None) or ""
    try:
        with open(path, encoding="utf-8") as f:
            lines = [line.strip() for line in f if line.strip()]
        return lines[-1] if lines else "failed"
    except OSError:
        return "failed"


def can_resume(directory: str) -> bool:
    """Whether ``directory`` holds the state of a search ``run_search`` started there."""
    from ray import tune

    return tune.Tuner.can_restore(os.path.join(os.path.abspath(directory), EXPERIMENT_NAME))


def run_search(
    trial: Callable[[dict[str, Any], TrialReporter], None],
    *,
    directory: str,
    specs: dict[str, tuple[str, tuple[Any, ...]]],
    metric: str,
    time_attr: str,
    max_t: int,
    scheduler: str = "fifo",
    search_alg: str | None = None,
    num_samples: int = 1,
    cpus_per_trial: float = 1.0,
    bundles: list[dict[str, float]] | None = None,
    perturbation_interval: int | None = None,
    seed: int = 0,
    resume: bool = False,
    address: str | None = None,
    num_cpus: int | None = None,
    on_event: Callable[[str, str, dict[str, Any], dict[str, Any] | None, str | None], None] | None = None,
) -> list[TrialRecord]:
    """Run (or with ``resume`` continue) a search; maximises ``metric``. ``bundles``: the
    resources of one trial's own actors (env runners) besides the trial itself."""
    from ray import tune
    from ray.tune.schedulers import ASHAScheduler, FIFOScheduler, PopulationBasedTraining

    from rlfleet.runtime.ray_backend import RayRuntime

    os.environ.setdefault("TUNE_GLOBAL_CHECKPOINT_S", "2")  # a killed driver loses at most ~2 s of state
    os.environ.setdefault("RAY_AIR_NEW_OUTPUT", "0")
    # Ctrl-C raises KeyboardInterrupt here (the caller exits 130), as a kill would stop the
    # search, instead of Tune's own handler ending fit() as if the search were complete
    os.environ.setdefault("TUNE_DISABLE_SIGINT_HANDLER", "1")
    os.environ.setdefault("TUNE_WARN_EXCESSIVE_EXPERIMENT_CHECKPOINT_SYNC_THRESHOLD_S", "0")
    runtime = RayRuntime(address=address, num_cpus=num_cpus)
    try:
        resources = tune.PlacementGroupFactory([{"CPU": cpus_per_trial}, *(bundles or [])])
        def rlfleet_trial(params: dict[str, Any]) -> None:  # the name Tune gives the trials
            trial(params, TrialReporter())

        trainable = tune.with_resources(rlfleet_trial, resources)
        callbacks = [_Progress(on_event)] if on_event else []
        storage = os.path.abspath(directory)
        run_config = tune.RunConfig(
            name=EXPERIMENT_NAME, storage_path=storage, verbose=0, callbacks=callbacks,
            failure_config=tune.FailureConfig(max_failures=0),
            # PBT restores a donor's checkpoint some time after choosing it: keep them all
            # there (one per perturbation interval), or the copy can find it deleted
            checkpoint_config=tune.CheckpointConfig(num_to_keep=None if scheduler == "pbt" else 2),
        )
        path = os.path.join(storage, EXPERIMENT_NAME)
        if resume:
            tuner = tune.Tuner.restore(path, trainable=trainable, resume_unfinished=True, resume_errored=False)
        else:
            space = {key: _domain(kind, args) for key, (kind, args) in specs.items()}
            tuner = tune.Tuner(trainable, param_space=space, run_config=run_config, tune_config=tune.TuneConfig(
                metric=metric, mode="max", num_samples=num_samples,
                scheduler=_scheduler(scheduler, metric=metric, time_attr=time_attr, max_t=max_t, num_samples=num_samples,
                                     interval=perturbation_interval, specs=specs, seed=seed,
                                     classes=(ASHAScheduler, FIFOScheduler, PopulationBasedTraining)),
                search_alg=_search_alg(search_alg, metric=metric, seed=seed),
            ))
        grid = tuner.fit()
        records = []
        for result in grid:
            error = str(result.error).strip().splitlines()[-1] if result.error is not None else None
            records.append(TrialRecord(str(result.metrics.get("trial_id", os.path.basename(result.path))),
                                       dict(result.config or {}), "failed" if error else "ended", error))
        return records
    finally:
        runtime.shutdown()


def _scheduler(kind: str, *, metric: str, time_attr: str, max_t: int, num_samples: int, interval: int | None,
               specs: dict[str, tuple[str, tuple[Any, ...]]], seed: int, classes: tuple) -> Any:
    asha, fifo, pbt = classes
    if kind == "fifo":
        return fifo()
    if kind == "asha":
        # rungs at 1/8, 1/4, 1/2 of the budget; half the trials go on at each
        return asha(time_attr=time_attr, max_t=max_t, grace_period=max(1, max_t // 8), reduction_factor=2)
    import random

    random.seed(seed)  # PBT draws its explore steps from the global RNG
    # the bottom quarter copies the top quarter; with fewer than 4 trials, the worst copies the best
    return pbt(time_attr=time_attr, perturbation_interval=interval or max(1, max_t // 10),
               quantile_fraction=min(0.5, max(0.25, 1.0 / max(num_samples, 1))),
               hyperparam_mutations={key: _domain(kind, args) if kind != "grid" else list(args)
                                     for key, (kind, args) in specs.items()})


def _search_alg(kind: str | None, *, metric: str, seed: int) -> Any:
    if kind is None:
        from ray.tune.search import BasicVariantGenerator

        return BasicVariantGenerator(random_state=seed)  # the same seed samples the same configs
    from ray.tune.search.optuna import OptunaSearch

    return OptunaSearch(seed=seed)


"""Running a search (scripts/tools/search.py has the space, the ranking and the outputs): what one
trial runs and records, and the whole search on the engine (runtime/tune.py), from the
first trial to ``best.yaml`` and the seeds that confirm it."""

from __future__ import annotations

import dataclasses
import json
import math
import os
from typing import Any, Callable

from rlfleet.rl.config import AlgorithmConfig, ConfigError, closest
from rlfleet.scripts.tools.experiment import Criteria, Experiment
from rlfleet.scripts.tools.search import (Spec, TrialSummary, _atomic, _short, check_pbt, median_summary, parse_search, rank,
                               summarize, trial_config, write_best, write_results)


# -- what a trial runs --------------------------------------------------------------------------
@dataclasses.dataclass(frozen=True)
class TrialSetup:
    """Everything a trial needs, shipped to Tune's workers (the config class by reference)."""

    config_class: type[AlgorithmConfig]
    base: dict[str, Any]
    specs: dict[str, Spec]
    stop: Criteria
    target: Criteria
    directory: str
    checkpoint_steps: int
    """Report a checkpoint each time env steps pass a multiple of this (PBT copies them; a
    resumed search restarts unfinished trials from them)."""


def trial_dir(directory: str, trial_id: str) -> str:
    return os.path.join(directory, "trials", trial_id)


def weights_digest(weights: dict[str, Any]) -> str:
    """A short fingerprint of a module's weights (which trial's weights a trial holds)."""
    import hashlib

    import numpy as np

    h = hashlib.sha1()
    for key in sorted(weights):
        h.update(key.encode())
        h.update(np.ascontiguousarray(np.asarray(weights[key])).tobytes())
    return h.hexdigest()[:16]


def run_trial(setup: TrialSetup, params: dict[str, Any], reporter: Any) -> None:
    """Train one config until the example's ``stop``; report every iteration to the engine.

    A trial's record (``trials/<id>/``): ``run/`` (progress.jsonl, TensorBoard), ``starts.jsonl``
    (one line per start: params, the checkpoint it restored and its weights' digest),
    ``checkpoints.jsonl`` (the digest of every checkpoint it reported) and, once finished,
    ``summary.json``: a trial restarted after that (a resumed search whose engine state was
    older than the trial's end) reports its final result again and trains nothing.
    """
    here = trial_dir(setup.directory, reporter.trial_id)
    os.makedirs(here, exist_ok=True)
    finished = os.path.join(here, "summary.json")
    if os.path.exists(finished):
        with open(finished, encoding="utf-8") as f:
            last = json.load(f)["last_result"]
        _append(os.path.join(here, "starts.jsonl"), {"params": params, "skipped": "finished before"})
        reporter.report(last)
        return
    config = setup.config_class.from_dict(
        {**trial_config(setup.base, params, setup.specs), "logdir": os.path.join(here, "run"), "log_to_console": False},
        source=f"trial {reporter.trial_id}")
    algo = config.build()
    try:
        restored = reporter.restored_checkpoint()
        if restored is not None:
            algo.restore(restored)
        _append(os.path.join(here, "starts.jsonl"), {
            "params": params, "restored": restored is not None, "iteration": algo.iteration,
            "weights": weights_digest(algo.learner_group.get_weights())})
        result: dict[str, Any] = {}
        score = -math.inf  # the target's metric, as last seen (evaluation metrics come every N rows)
        last_mark = algo.env_steps // setup.checkpoint_steps
        while not result or not setup.stop.done(result):
            result = algo.train()
            value = result.get(setup.target.metric)
            if isinstance(value, (int, float)) and not math.isnan(value):
                score = float(value)
            metrics = _metrics(result, setup.target, score)
            mark = algo.env_steps // setup.checkpoint_steps
            if mark > last_mark or setup.stop.done(result):
                last_mark = mark
                import tempfile

                with tempfile.TemporaryDirectory(prefix="rlfleet-trial-") as scratch:
                    algo.save(scratch)
                    _append(os.path.join(here, "checkpoints.jsonl"), {
                        "iteration": algo.iteration, "env_steps": algo.env_steps,
                        "weights": weights_digest(algo.learner_group.get_weights())})
                    reporter.report(metrics, checkpoint_dir=scratch)
            else:
                reporter.report(metrics)
        _atomic(finished, lambda f: json.dump({"params": params, "last_result": metrics}, f))
    finally:
        algo.stop()


SCORE = "score"
"""What schedulers compare: the example's target metric (``episode_return_mean`` unless its
criterion names another), -inf before it has a value."""


def _metrics(result: dict[str, Any], target: Criteria, score: float) -> dict[str, Any]:
    """What the engine sees of an iteration."""
    ret = result.get("episode_return_mean")
    keys = ("iteration", "env_steps", "time_s", "episode_window_full", "learner/lr")
    return {**{k: result[k] for k in keys if k in result}, SCORE: score,
            "episode_return_mean": ret if ret is not None and not math.isnan(ret) else -math.inf,
            "reached": bool(target.reached(result))}


def _append(path: str, row: dict[str, Any]) -> None:
    with open(path, "a", encoding="utf-8") as f:
        f.write(json.dumps(row, default=_json_default) + "\n")


def _json_default(value: Any) -> Any:
    return list(value) if isinstance(value, tuple) else str(value)


# -- a whole search -----------------------------------------------------------------------------
@dataclasses.dataclass
class SearchOptions:
    """One search, as scripts/tune.py builds it; saved to ``search.json`` for ``--resume``."""

    source: str  # the tuned example
    directory: str
    search: dict[str, Any]  # the raw space
    overrides: dict[str, Any] = dataclasses.field(default_factory=dict)  # --set
    scheduler: str = "fifo"
    search_alg: str | None = None
    num_samples: int = 8
    cpus_per_trial: float = 1.0
    confirm_seeds: int = 0
    confirm_top: int = 3
    perturbation_interval: int | None = None
    stop_env_steps: int | None = None
    seed: int = 0
    address: str | None = None
    num_cpus: int | None = None
    metric: str | None = None  # --metric: the score's progress-row key instead of the example's
    threshold: float | None = None  # --threshold: what that key must reach

    def save(self) -> None:
        _atomic(os.path.join(self.directory, "search.json"), lambda f: json.dump(dataclasses.asdict(self), f, indent=1))

    @classmethod
    def load(cls, directory: str) -> "SearchOptions":
        """The settings of the search in ``directory``; a search.json that is not JSON, not
        a search's (unknown or missing keys, values of the wrong type) is refused in one
        line. The search is the one in ``directory``, wherever search.json says it was:
        a moved search resumes where it is, and a copied one never writes into another."""
        path = os.path.join(directory, "search.json")
        try:
            with open(path, encoding="utf-8") as f:
                data = json.load(f)
        except OSError:
            raise ConfigError(f"--resume: {directory!r} holds no search (no search.json)") from None
        except ValueError as e:  # JSONDecodeError, UnicodeDecodeError
            raise ConfigError(f"--resume: {path} is not JSON ({str(e).splitlines()[0]}): not a search's settings, "
                              "or written by something else") from None
        if not isinstance(data, dict):
            raise ConfigError(f"--resume: {path} holds a {type(data).__name__}, not a search's settings (a JSON "
                              "object written by tune.py)")
        fields = {f.name: f for f in dataclasses.fields(cls)}
        for key in data:
            if key not in fields:
                raise ConfigError(f"--resume: {path}: unknown key {key!r}{closest(str(key), fields)} (not a search's "
                                  "settings, or written by another rlfleet version)")
        for name, field in fields.items():
            required = field.default is dataclasses.MISSING and field.default_factory is dataclasses.MISSING
            if required and name not in data:
                raise ConfigError(f"--resume: {path} lacks {name!r}: not a search's settings")
            if name in data and not _fits(data[name], _SETTING_TYPES[name]):
                raise ConfigError(f"--resume: {path}: {name!r} must be {_SETTING_TYPES[name][1]}, got {data[name]!r}")
        return cls(**{**data, "directory": os.path.abspath(directory)})


# What each search.json value may be: (accepted types, how the message says it).
_SETTING_TYPES: dict[str, tuple[tuple[type, ...], str]] = {
    "source": ((str,), "a path"), "directory": ((str,), "a path"), "search": ((dict,), "a mapping"),
    "overrides": ((dict,), "a mapping"), "scheduler": ((str,), "a name"), "search_alg": ((str, type(None)), "a name"),
    "num_samples": ((int,), "an integer"), "cpus_per_trial": ((int, float), "a number"),
    "confirm_seeds": ((int,), "an integer"), "confirm_top": ((int,), "an integer"),
    "perturbation_interval": ((int, type(None)), "an integer"), "stop_env_steps": ((int, type(None)), "an integer"),
    "seed": ((int,), "an integer"), "address": ((str, type(None)), "an address"),
    "num_cpus": ((int, type(None)), "an integer"), "metric": ((str, type(None)), "a progress-row key"),
    "threshold": ((int, float, type(None)), "a number"),
}


def _fits(value: Any, kinds: tuple[tuple[type, ...], str]) -> bool:
    return isinstance(value, kinds[0]) and not isinstance(value, bool)


@dataclasses.dataclass
class SearchOutcome:
    ranked: list[TrialSummary]
    best: TrialSummary | None
    best_yaml: str | None
    table: str
    confirmed: list[TrialSummary] = dataclasses.field(default_factory=list)


def prepare(options: SearchOptions, exp: Experiment,
            config_class: type[AlgorithmConfig]) -> tuple[TrialSetup, dict[str, Spec]]:
    """Check the whole search before anything runs: every error here is bad input."""
    from rlfleet.runtime.tune import SCHEDULERS

    if options.scheduler not in SCHEDULERS:
        raise ConfigError(f"unknown scheduler {options.scheduler!r}{closest(options.scheduler, SCHEDULERS)} "
                          f"(choose from {', '.join(SCHEDULERS)})")
    if options.num_samples < 1:
        raise ConfigError(f"--num-samples must be >= 1, got {options.num_samples}")
    base = {**exp.config, **options.overrides, "env": exp.env}
    config_class.from_dict(base, source=options.source)
    specs = parse_search(options.search, config_class, base, source=options.source)
    if not specs:
        raise ConfigError(f"{options.source}: nothing to search: add a 'search:' section or --search KEY=SPEC")
    if options.scheduler == "pbt":
        check_pbt(specs)
    if options.search_alg == "optuna" and any(s.kind == "grid" for s in specs.values()):
        raise ConfigError("Optuna's TPE samples; a 'grid' spec needs --search-alg none")
    stop = dataclasses.replace(exp.stop, env_steps=options.stop_env_steps or exp.stop.env_steps)
    if stop.env_steps is None and options.scheduler != "fifo":
        raise ConfigError(f"{options.source}: {options.scheduler} needs a budget: 'stop: env_steps' or --stop-timesteps")
    setup_bundles = _runner_bundles(config_class, base)
    need = options.cpus_per_trial + sum(b["CPU"] for b in setup_bundles)
    have = options.num_cpus or (os.cpu_count() or 1)
    if options.address is None and need > have:
        raise ConfigError(f"a trial needs {need:g} CPUs ({options.cpus_per_trial:g} for the trial + {len(setup_bundles)} "
                          f"env runner/learner actors) and this machine's Ray has {have}: lower --cpus-per-trial or "
                          "num_cpus_per_runner (--set), or raise --num-cpus")
    target = exp.pass_criteria
    if target.episode_return_mean is None:
        target = dataclasses.replace(target, episode_return_mean=exp.stop.episode_return_mean)
    if options.metric:  # a custom/<key> of info_metrics or a callback, an evaluation/* key, ...
        target = dataclasses.replace(target, metric=options.metric, episode_return_mean=options.threshold)
    elif options.threshold is not None:
        raise ConfigError("--threshold needs --metric (the key it applies to)")
    interval = options.perturbation_interval or (stop.env_steps // 10 if stop.env_steps else None)
    checkpoint_steps = interval if options.scheduler == "pbt" else max(1, (stop.env_steps or 200_000) // 10)
    return TrialSetup(config_class, base, specs, stop, target, os.path.abspath(options.directory),
                      int(checkpoint_steps)), specs


def run_search(options: SearchOptions, exp: Experiment, config_class: type[AlgorithmConfig], *, resume: bool,
               echo: Callable[[str], None] = print, on_trial_end: Callable[[], None] | None = None) -> SearchOutcome:
    import functools

    from rlfleet.runtime import tune

    setup, specs = prepare(options, exp, config_class)
    live = _LiveCount(setup, echo, on_trial_end)
    records = tune.run_search(
        functools.partial(run_trial, setup), directory=setup.directory,
        specs={k: (s.kind, s.args) for k, s in specs.items()}, metric=SCORE, time_attr="env_steps",
        max_t=setup.stop.env_steps or 0, scheduler=options.scheduler, search_alg=options.search_alg,
        num_samples=options.num_samples, cpus_per_trial=options.cpus_per_trial,
        bundles=_runner_bundles(setup.config_class, setup.base),
        perturbation_interval=setup.checkpoint_steps if options.scheduler == "pbt" else None, seed=options.seed,
        resume=resume, address=options.address, num_cpus=options.num_cpus, on_event=live)
    ranked = rank([_summary(setup, r.trial_id, r.params, r.error) for r in records])
    table = write_results(setup.directory, ranked)
    confirmed: list[TrialSummary] = []
    best = ranked[0] if ranked else None
    if best is not None and options.confirm_seeds > 0:
        confirmed = _confirm(options, setup, ranked[:options.confirm_top], echo)
        best = confirmed[0]
        table += "\n\nconfirmed on fresh seeds (medians):\n" + write_results(setup.directory, confirmed, name="confirm")
    best_yaml = None
    if best is not None and best.status != "failed":
        best_yaml = os.path.join(setup.directory, "best.yaml")
        note = (f"best of the search in {setup.directory} ({options.scheduler}, {options.num_samples} samples): "
                f"trial {best.trial_id}, {_outcome(best)}")
        write_best(best_yaml, options.source, best, specs, note=note)
    return SearchOutcome(ranked, best, best_yaml, table, confirmed)


def _runner_bundles(config_class: type[AlgorithmConfig], base: dict[str, Any]) -> list[dict[str, float]]:
    """The CPUs of a trial's own actors: its env runners and learners."""
    config = config_class.from_dict(base, source="search")
    runners = getattr(config, "num_env_runners", 0)
    per_runner = float(getattr(config, "num_cpus_per_runner", 1.0))
    return [{"CPU": per_runner}] * runners + [{"CPU": 1.0}] * getattr(config, "num_learners", 0)


def _summary(setup: TrialSetup, trial_id: str, params: dict[str, Any], error: str | None) -> TrialSummary:
    here = trial_dir(setup.directory, trial_id)
    status = "failed" if error else ("done" if os.path.exists(os.path.join(here, "summary.json")) else "stopped")
    params = {k: v for k, v in params.items() if not k.startswith("_")}
    return summarize(trial_id, params, os.path.join(here, "run", "progress.jsonl"), setup.target, status=status,
                     error=error)


def _outcome(t: TrialSummary) -> str:
    if t.reached:
        return f"reached {t.steps_to_threshold:,} env steps ({t.seconds_to_threshold:.1f} s) to the threshold"
    if t.status == "failed":
        return f"failed: {t.error}"
    best = f"{t.best_return:.1f}" if t.best_return is not None else "none"
    return f"{t.status}, best return {best} after {t.env_steps:,} env steps"


class _LiveCount:
    """The console side of a search: a line per started and finished trial, with the count
    of running, done and failed trials and the best so far."""

    def __init__(self, setup: TrialSetup, echo: Callable[[str], None],
                 on_trial_end: Callable[[], None] | None = None) -> None:
        self.setup, self.echo, self.on_trial_end = setup, echo, on_trial_end
        self.running: set[str] = set()
        self.finished: dict[str, TrialSummary] = {}

    def __call__(self, kind: str, trial_id: str, params: dict[str, Any], last: dict[str, Any] | None,
                 error: str | None) -> None:
        shown = " ".join(f"{k}={_short(v)}" for k, v in sorted(params.items()))
        if kind == "start":
            self.running.add(trial_id)
            self.echo(f"[search] trial {trial_id} started: {shown}")
            return
        self.running.discard(trial_id)
        summary = _summary(self.setup, trial_id, params, error)
        self.finished[trial_id] = summary
        best = rank(list(self.finished.values()))[0]
        failed = sum(1 for s in self.finished.values() if s.status == "failed")
        self.echo(f"[search] trial {trial_id} {_outcome(summary)}: {shown} | running {len(self.running)}, "
                  f"done {len(self.finished) - failed}, failed {failed}, best {best.trial_id} ({_outcome(best)})")
        if self.on_trial_end is not None:
            self.on_trial_end()


def _confirm(options: SearchOptions, setup: TrialSetup, top: list[TrialSummary],
             echo: Callable[[str], None]) -> list[TrialSummary]:
    """Re-run the top configs on ``confirm_seeds`` fresh seeds; rank them by their medians."""
    import functools

    from rlfleet.runtime import tune

    seeds = tuple(10_000 + i for i in range(options.confirm_seeds))
    candidates = tuple(range(len(top)))
    confirm = dataclasses.replace(setup, directory=os.path.join(setup.directory, "confirm"))
    os.makedirs(confirm.directory, exist_ok=True)
    echo(f"[search] confirming the top {len(top)} configs on seeds {', '.join(map(str, seeds))}")
    records = tune.run_search(
        functools.partial(_run_candidate, confirm, [t.params for t in top]), directory=confirm.directory,
        specs={"_candidate": ("grid", candidates), "_seed": ("grid", seeds)}, metric=SCORE,
        time_attr="env_steps", max_t=setup.stop.env_steps or 0, scheduler="fifo", num_samples=1,
        cpus_per_trial=options.cpus_per_trial, bundles=_runner_bundles(setup.config_class, setup.base),
        resume=False,
        address=options.address, num_cpus=options.num_cpus, on_event=_LiveCount(confirm, echo))
    per_candidate: dict[int, list[TrialSummary]] = {i: [] for i in candidates}
    for r in records:
        per_candidate[r.params["_candidate"]].append(_summary(confirm, r.trial_id, r.params, r.error))
    return rank([median_summary(top[i].trial_id, top[i].params, seeds_of) for i, seeds_of in per_candidate.items()
                 if seeds_of])


def _run_candidate(setup: TrialSetup, candidates: list[dict[str, Any]], params: dict[str, Any], reporter: Any) -> None:
    run_trial(setup, {**candidates[params["_candidate"]], "seed": params["_seed"]}, reporter)

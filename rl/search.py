"""Hyperparameter search over a tuned example, engine-free: the search space and its
checks, what a trial runs, how trials rank, and the tuned example a search ends in.
The engine (Ray Tune: schedulers, search algorithms, trial checkpoints, resume) is in
runtime/tune.py; scripts/tune.py joins the two.

A search space lives in the example's YAML under ``search:`` (or ``--search KEY=SPEC``)::

    search:
      lr: {loguniform: [1.0e-4, 3.0e-3]}
      num_epochs: {choice: [4, 10, 20]}
      gamma: {uniform: [0.95, 0.999]}
      minibatch_size: {randint: [32, 257]}     # [low, high)
      hidden_sizes: {grid: [[64, 64], [256, 256]]}

Trials rank by: reached the example's pass threshold (within its bounds), then fewest env
steps to it, then fewest seconds; trials that never reach it rank by best return.
"""

from __future__ import annotations

import csv
import dataclasses
import json
import math
import os
import random
from typing import Any, Callable

import yaml

from rlfleet.rl.config import AlgorithmConfig, ConfigError, closest
from rlfleet.rl.experiment import Criteria, Experiment

SPEC_KINDS = ("choice", "grid", "uniform", "loguniform", "randint")
PBT_FIXED = ("hidden_sizes", "activation", "shared_encoder", "dueling", "normalize_obs", "encode_action_mask",
             "env", "env_config", "num_learners", "seed")
"""Keys PBT cannot change mid-trial: they shape the model or the run, and PBT copies one
trial's checkpoint into another."""


@dataclasses.dataclass(frozen=True)
class Spec:
    """One searched key: ``kind`` in SPEC_KINDS and its arguments."""

    key: str
    kind: str
    args: tuple[Any, ...]

    def sample(self, rng: random.Random) -> Any:
        """A value drawn as the engine would (for checks and tests)."""
        if self.kind in ("choice", "grid"):
            return rng.choice(self.args)
        low, high = self.args
        if self.kind == "uniform":
            return rng.uniform(low, high)
        if self.kind == "loguniform":
            return math.exp(rng.uniform(math.log(low), math.log(high)))
        return rng.randrange(low, high)

    def corners(self) -> list[Any]:
        """Values at the edges of the space: every choice, or low and (nearly) high."""
        if self.kind in ("choice", "grid"):
            return list(self.args)
        low, high = self.args
        return [low, high - 1] if self.kind == "randint" else [low, high]


def parse_spec(key: str, value: Any, *, source: str) -> Spec:
    where = f"{source}: search key {key!r}"
    if not isinstance(value, dict) or len(value) != 1:
        raise ConfigError(f"{where}: expected one of {{{', '.join(k + ': [...]' for k in SPEC_KINDS)}}}, got {value!r}")
    (kind, args), = value.items()
    if kind not in SPEC_KINDS:
        raise ConfigError(f"{where}: unknown kind {kind!r}{closest(str(kind), SPEC_KINDS)} (kinds: {', '.join(SPEC_KINDS)})")
    if not isinstance(args, list) or not args:
        raise ConfigError(f"{where}: {kind} takes a non-empty list, got {args!r}")
    if kind in ("choice", "grid"):
        return Spec(key, kind, tuple(tuple(a) if isinstance(a, list) else a for a in args))
    args = [_number(a) for a in args]  # YAML 1.1 reads 1e-4 (no dot) as a string
    if len(args) != 2 or not all(isinstance(a, (int, float)) and not isinstance(a, bool) for a in args):
        raise ConfigError(f"{where}: {kind} takes [low, high], two numbers, got {args!r}")
    low, high = args
    if not low < high:
        raise ConfigError(f"{where}: {kind} needs low < high, got [{low}, {high}]")
    if kind == "loguniform" and low <= 0:
        raise ConfigError(f"{where}: loguniform needs low > 0, got {low}")
    if kind == "randint" and not (isinstance(low, int) and isinstance(high, int)):
        raise ConfigError(f"{where}: randint takes integers [low, high), got {args!r}")
    return Spec(key, kind, (low, high))


def _number(value: Any) -> Any:
    if isinstance(value, str):
        try:
            return float(value)
        except ValueError:
            pass
    return value


def parse_search(values: dict[str, Any] | None, config_class: type[AlgorithmConfig], base: dict[str, Any], *,
                 source: str) -> dict[str, Spec]:
    """The search space: every key a config field, every spec well formed, and the
    config valid at the space's corners (a ``num_epochs`` of 0 is refused here, not in a
    trial an hour later)."""
    if values is None:
        return {}
    if not isinstance(values, dict):
        raise ConfigError(f"{source}: 'search' must be a mapping of config keys to specs, got {values!r}")
    names = config_class.field_names()
    specs: dict[str, Spec] = {}
    for key, value in values.items():
        if key not in names:
            raise ConfigError(f"{source}: search key {key!r} is not a {config_class.algo_name} config key"
                              f"{closest(str(key), names)}")
        if key in ("env", "logdir"):
            raise ConfigError(f"{source}: search key {key!r} cannot be searched (a search is over one env)")
        specs[key] = parse_spec(key, value, source=source)
    for spec in specs.values():
        for corner in spec.corners():
            try:
                config_class.from_dict(trial_config(base, {spec.key: corner}, specs), source=source)
            except ConfigError as e:
                raise ConfigError(f"{source}: search key {spec.key!r} at {corner!r}: {e}") from None
    return specs


def parse_search_flags(pairs: list[str]) -> dict[str, Any]:
    """``--search KEY=SPEC`` (SPEC in YAML: ``lr={loguniform: [1e-4, 3e-3]}``) -> a mapping."""
    out: dict[str, Any] = {}
    for pair in pairs:
        key, sep, value = pair.partition("=")
        if not sep or not key.strip():
            raise ConfigError(f"--search expects KEY=SPEC, got {pair!r}")
        try:
            out[key.strip()] = yaml.safe_load(value)
        except yaml.YAMLError as e:
            raise ConfigError(f"--search {pair!r}: not YAML: {str(e).splitlines()[0]}") from None
    return out


def trial_config(base: dict[str, Any], params: dict[str, Any], specs: dict[str, Spec]) -> dict[str, Any]:
    """The config a trial runs: the base with the searched values. A searched ``lr`` under
    an ``lr_schedule`` scales the whole schedule (its first point becomes ``lr``), since the
    schedule, not ``lr``, sets the learner's rate."""
    config = {**base, **{k: list(v) if isinstance(v, tuple) else v for k, v in params.items()}}
    schedule = base.get("lr_schedule")
    if "lr" in params and schedule and "lr_schedule" not in specs:
        start = float(schedule[0][1])
        if start <= 0:
            raise ConfigError("search key 'lr': the lr_schedule starts at 0, so it cannot be scaled to a searched lr")
        config["lr_schedule"] = [[t, float(v) * params["lr"] / start] for t, v in schedule]
    return config


def schedule_note(base: dict[str, Any], specs: dict[str, Spec]) -> str | None:
    """Says so where a searched key acts through a schedule (never silently ignored)."""
    if "lr" in specs and base.get("lr_schedule") and "lr_schedule" not in specs:
        return "lr is searched under an lr_schedule: each trial scales the whole schedule to start at its lr"
    return None


def check_pbt(specs: dict[str, Spec]) -> None:
    fixed = [k for k in specs if k in PBT_FIXED]
    if fixed:
        raise ConfigError(f"search key {fixed[0]!r} cannot be searched with PBT: it shapes the model or the run, and "
                          "PBT copies one trial's checkpoint into another (search it with --scheduler asha or fifo)")
    if not specs:
        raise ConfigError("PBT needs a search space to perturb")


# -- a trial ------------------------------------------------------------------------------------
@dataclasses.dataclass
class TrialSummary:
    """What one trial reached, read from its progress file."""

    trial_id: str
    params: dict[str, Any]
    status: str  # done, failed, running
    best_return: float | None
    env_steps: int
    seconds: float
    steps_to_threshold: int | None
    seconds_to_threshold: float | None
    error: str | None = None

    @property
    def reached(self) -> bool:
        return self.steps_to_threshold is not None


def summarize(trial_id: str, params: dict[str, Any], progress_path: str, target: Criteria, *, status: str,
              error: str | None = None) -> TrialSummary:
    """Best return and the first row that met ``target`` (its return over a full window,
    within its env-step and time bounds) in a progress.jsonl."""
    rows = []
    if os.path.exists(progress_path):
        with open(progress_path, encoding="utf-8") as f:
            rows = [json.loads(line) for line in f if line.strip()]
    returns = [r["episode_return_mean"] for r in rows
               if r.get("episode_return_mean") is not None and not math.isnan(r["episode_return_mean"])]
    hit = next((r for r in rows if target.reached(r)
                and (target.env_steps is None or r["env_steps"] <= target.env_steps)
                and (target.time_s is None or r["time_s"] <= target.time_s)), None)
    return TrialSummary(trial_id, params, status, max(returns) if returns else None,
                        rows[-1]["env_steps"] if rows else 0, rows[-1]["time_s"] if rows else 0.0,
                        hit["env_steps"] if hit else None, hit["time_s"] if hit else None, error)


def rank(trials: list[TrialSummary]) -> list[TrialSummary]:
    """Reached first (fewest env steps to the threshold, then fewest seconds), then the
    rest by best return; failed trials last."""
    def key(t: TrialSummary) -> tuple:
        if t.reached:
            return (0, t.steps_to_threshold, t.seconds_to_threshold)
        best = t.best_return if t.best_return is not None else -math.inf
        return (1 if t.status != "failed" else 2, -best, t.trial_id)

    return sorted(trials, key=key)


def median_summary(trial_id: str, params: dict[str, Any], seeds: list[TrialSummary]) -> TrialSummary:
    """One config over several seeds: reached when most seeds reached, with the medians."""
    def median(xs: list[float]) -> float:
        xs = sorted(xs)
        mid = len(xs) // 2
        return xs[mid] if len(xs) % 2 else (xs[mid - 1] + xs[mid]) / 2

    reached = [s for s in seeds if s.reached]
    majority = len(reached) * 2 > len(seeds)
    # A seed that missed counts as the worst: the median over all seeds, misses at +inf.
    steps = median([s.steps_to_threshold if s.reached else math.inf for s in seeds])
    secs = median([s.seconds_to_threshold if s.reached else math.inf for s in seeds])
    returns = [s.best_return for s in seeds if s.best_return is not None]
    return TrialSummary(trial_id, params, "done", median(returns) if returns else None,
                        int(median([s.env_steps for s in seeds])), median([s.seconds for s in seeds]),
                        int(steps) if majority and math.isfinite(steps) else None,
                        secs if majority and math.isfinite(secs) else None)


# -- the end of a search ------------------------------------------------------------------------
COLUMNS = ("rank", "trial", "status", "params", "best_return", "steps_to_threshold", "seconds_to_threshold",
           "env_steps", "seconds")


def table_rows(ranked: list[TrialSummary]) -> list[dict[str, Any]]:
    def fmt(x: Any, digits: int = 1) -> str:
        return "" if x is None else (f"{x:.{digits}f}" if isinstance(x, float) else str(x))

    return [{"rank": i + 1, "trial": t.trial_id, "status": t.status,
             "params": " ".join(f"{k}={_short(v)}" for k, v in sorted(t.params.items())),
             "best_return": fmt(t.best_return), "steps_to_threshold": fmt(t.steps_to_threshold),
             "seconds_to_threshold": fmt(t.seconds_to_threshold), "env_steps": fmt(t.env_steps),
             "seconds": fmt(t.seconds)} for i, t in enumerate(ranked)]


def _short(v: Any) -> str:
    return f"{v:.4g}" if isinstance(v, float) else str(list(v) if isinstance(v, tuple) else v)


def write_results(directory: str, ranked: list[TrialSummary], *, name: str = "results") -> str:
    """``results.csv`` and ``results.md`` in ``directory``; returns the table as text."""
    rows = table_rows(ranked)
    _atomic(os.path.join(directory, f"{name}.csv"), lambda f: _csv(f, rows))
    lines = ["| " + " | ".join(COLUMNS) + " |", "|" + "---|" * len(COLUMNS)]
    lines += ["| " + " | ".join(str(r[c]) for c in COLUMNS) + " |" for r in rows]
    _atomic(os.path.join(directory, f"{name}.md"), lambda f: f.write("\n".join(lines) + "\n"))
    widths = {c: max(len(c), *(len(str(r[c])) for r in rows)) if rows else len(c) for c in COLUMNS}
    text = ["  ".join(c.ljust(widths[c]) for c in COLUMNS)]
    text += ["  ".join(str(r[c]).ljust(widths[c]) for c in COLUMNS) for r in rows]
    return "\n".join(text)


def _csv(f: Any, rows: list[dict[str, Any]]) -> None:
    writer = csv.DictWriter(f, fieldnames=COLUMNS)
    writer.writeheader()
    writer.writerows(rows)


def write_best(path: str, source_path: str, winner: TrialSummary, specs: dict[str, Spec], *, note: str) -> None:
    """The source tuned example with only the searched keys changed (and an ``lr_schedule``
    scaled with a searched ``lr``): ``stop``, ``pass`` and the rest stay as they were."""
    with open(source_path, encoding="utf-8") as f:
        data = yaml.safe_load(f)
    data["config"] = trial_config(dict(data.get("config") or {}), winner.params, specs)
    data.pop("search", None)  # the winner is a config, not a search; the source keeps the space
    header = "".join(f"# {line}\n" for line in [note, schedule_note(data["config"], specs)] if line)
    _atomic(path, lambda f: f.write(header + yaml.safe_dump(_plain(data), sort_keys=False, default_flow_style=None,
                                                           width=100)))


def _plain(value: Any) -> Any:
    if isinstance(value, dict):
        return {k: _plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    return float(f"{value:.6g}") if isinstance(value, float) else value  # 6 digits: readable, exact enough


def _atomic(path: str, write: Callable[[Any], None]) -> None:
    tmp = path + ".tmp"
    with open(tmp, "w", encoding="utf-8", newline="") as f:
        write(f)
    os.replace(tmp, path)


def experiment_base(exp: Experiment) -> dict[str, Any]:
    return {**exp.config, "env": exp.env}


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
        last_mark = algo.env_steps // setup.checkpoint_steps
        while not result or not setup.stop.done(result):
            result = algo.train()
            metrics = _metrics(result, setup.target)
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


def _metrics(result: dict[str, Any], target: Criteria) -> dict[str, Any]:
    """What the engine sees of an iteration: a NaN return (no episode yet) as -inf, so
    schedulers compare it."""
    ret = result.get("episode_return_mean")
    keys = ("iteration", "env_steps", "time_s", "episode_window_full", "learner/lr")
    return {**{k: result[k] for k in keys if k in result},
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

    def save(self) -> None:
        _atomic(os.path.join(self.directory, "search.json"), lambda f: json.dump(dataclasses.asdict(self), f, indent=1))

    @classmethod
    def load(cls, directory: str) -> "SearchOptions":
        path = os.path.join(directory, "search.json")
        try:
            with open(path, encoding="utf-8") as f:
                return cls(**json.load(f))
        except OSError:
            raise ConfigError(f"--resume: {directory!r} holds no search (no search.json)") from None


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
    interval = options.perturbation_interval or (stop.env_steps // 10 if stop.env_steps else None)
    checkpoint_steps = interval if options.scheduler == "pbt" else max(1, (stop.env_steps or 200_000) // 10)
    return TrialSetup(config_class, base, specs, stop, target, os.path.abspath(options.directory),
                      int(checkpoint_steps)), specs


def run_search(options: SearchOptions, exp: Experiment, config_class: type[AlgorithmConfig], *, resume: bool,
               echo: Callable[[str], None] = print) -> SearchOutcome:
    import functools

    from rlfleet.runtime import tune

    setup, specs = prepare(options, exp, config_class)
    live = _LiveCount(setup, echo)
    records = tune.run_search(
        functools.partial(run_trial, setup), directory=setup.directory,
        specs={k: (s.kind, s.args) for k, s in specs.items()}, metric="episode_return_mean", time_attr="env_steps",
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

    def __init__(self, setup: TrialSetup, echo: Callable[[str], None]) -> None:
        self.setup, self.echo = setup, echo
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
        specs={"_candidate": ("grid", candidates), "_seed": ("grid", seeds)}, metric="episode_return_mean",
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

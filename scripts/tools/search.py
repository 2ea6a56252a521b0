"""Hyperparameter search over a tuned example, engine-free: the search space and its
checks, what a trial runs, how trials rank, and the tuned example a search ends in.
Running one (what a trial runs, the whole search on the engine) is scripts/tools/search_run.py; the
engine (Ray Tune: schedulers, search algorithms, trial checkpoints, resume) is
runtime/tune.py.

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

from rlfleet.rl.config import AlgorithmConfig, ConfigError, closest, lr_over_schedule
from rlfleet.rl.config_values import parse_key_values
from rlfleet.scripts.tools.experiment import Criteria

SPEC_KINDS = ("choice", "grid", "uniform", "loguniform", "randint")
PBT_FIXED = ("hidden_sizes", "activation", "shared_encoder", "dueling", "normalize_obs", "normalize_rewards",
             "encode_action_mask", "memory", "memory_size", "env", "env_config", "num_learners", "seed")
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
        return Spec(key, kind, tuple(tuple(a) if isinstance(a, list) else _number(a) for a in args))
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
    return parse_key_values(pairs, flag="--search", value_name="SPEC")


def trial_config(base: dict[str, Any], params: dict[str, Any], specs: dict[str, Spec]) -> dict[str, Any]:
    """The config a trial runs: the base with the searched values. A searched ``lr`` under
    an ``lr_schedule`` scales the whole schedule (its first point becomes ``lr``), since the
    schedule, not ``lr``, sets the learner's rate."""
    params = {k: list(v) if isinstance(v, tuple) else v for k, v in params.items()}
    if "lr_schedule" in specs:  # a searched schedule is taken as sampled, even at an lr-only corner
        return {**base, **params}
    return {**base, **lr_over_schedule(base.get("lr_schedule"), params, source="search key")}


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
    """Best value of the target's metric (the return, unless the criterion names another)
    and the first row that met ``target`` (a return over a full window, within its
    env-step and time bounds) in a progress.jsonl."""
    rows = []
    if os.path.exists(progress_path):
        with open(progress_path, encoding="utf-8") as f:
            rows = [json.loads(line) for line in f if line.strip()]
    returns = [r[target.metric] for r in rows  # the target's metric: the return unless it names another
               if isinstance(r.get(target.metric), (int, float)) and not math.isnan(r[target.metric])]
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
             "best_return": "" if t.best_return is None else f"{t.best_return:.4g}", "steps_to_threshold": fmt(t.steps_to_threshold),
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

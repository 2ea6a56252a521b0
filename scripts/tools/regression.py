"""Regression runs over tuned examples: does every algorithm still learn what it learned
last week, as fast?

Each (example, seed) runs as its own training process (the caller names the command) (isolated seeds, threads
and Ray instances), and its progress file tells when the pass threshold was first reached.
An example passes when every seed reaches ``pass.episode_return_mean`` within
``pass.env_steps`` and ``pass.time_s``; against a baseline, a pass that became a fail or a
median env-step count to the threshold worse by more than the tolerance is a
regression.
"""

from __future__ import annotations

import dataclasses
import glob
import json
import os
import platform
import statistics
import subprocess
import tempfile
import time
from typing import Any, Callable

from rlfleet.rl.config import AlgorithmConfig, ConfigError
from rlfleet.scripts.tools.experiment import Experiment, load_experiment


def _last_value(rows: list[dict[str, Any]], metric: str) -> float | None:
    """The metric in the last row that has it (evaluation metrics come every N rows)."""
    return next((r[metric] for r in reversed(rows) if metric in r), None)


@dataclasses.dataclass
class SeedResult:
    seed: int
    reached: bool  # the threshold, within the pass bounds
    final_return: float | None
    env_steps_to_threshold: int | None
    seconds_to_threshold: float | None
    env_steps: int
    seconds: float
    exit_code: int
    curve: list[tuple[int, float, float]] = dataclasses.field(default_factory=list, repr=False)
    """(env_steps, time_s, value of the pass metric) of each progress row with a value, for
    ``run_regression.py --plot``: the run's logdir is gone once it ends. Not in the results
    JSON (a baseline stays one line per seed)."""


def find_examples(patterns: list[str], root: str, tag: str | None) -> list[str]:
    """Files named by paths or globs (all tuned examples when none), filtered by tag."""
    paths: list[str] = []
    for pattern in patterns or [os.path.join(root, "**", "*.yaml")]:
        matches = sorted(glob.glob(pattern, recursive=True))
        if not matches:
            raise ConfigError(f"no tuned example matches {pattern!r}")
        paths += [m for m in matches if m not in paths]
    if tag:
        paths = [p for p in paths if tag in load_experiment(p).tags]
    return paths


def validate(path: str, config_class_for: Callable[[str, str], type[AlgorithmConfig]]) -> Experiment:
    """Load and check a tuned example completely before anything runs."""
    exp = load_experiment(path)
    config_class = config_class_for(exp.algo, exp.env)
    config_class.from_dict({**exp.config, "env": exp.env}, source=path)  # unknown keys, bad values
    if exp.pass_criteria.episode_return_mean is None:
        raise ConfigError(f"{path}: missing pass criterion 'pass: episode_return_mean'")
    if exp.pass_criteria.env_steps is None and exp.pass_criteria.time_s is None:
        raise ConfigError(f"{path}: 'pass' needs env_steps or time_s to bound the run")
    return exp


def run_seed(exp: Experiment, seed: int, train_command: list[str], overrides: list[str]) -> SeedResult:
    target = exp.pass_criteria
    with tempfile.TemporaryDirectory() as logdir:
        cmd = [*train_command, "--config", exp.path, "--seed", str(seed), "--logdir", logdir, "--quiet",
               "--stop-reward", str(target.episode_return_mean), "--stop-metric", target.metric]
        if target.env_steps is not None:
            cmd += ["--stop-timesteps", str(target.env_steps)]
        if target.time_s is not None:
            cmd += ["--stop-seconds", str(target.time_s)]
        for pair in overrides:
            cmd += ["--set", pair]
        # A child started from a Ray task must start its own Ray instance, not join ours.
        env = {k: v for k, v in os.environ.items() if not k.startswith("RAY_")}
        proc = subprocess.run(cmd, capture_output=True, text=True, env=env)
        rows = []
        progress = os.path.join(logdir, "progress.jsonl")
        if os.path.exists(progress):
            with open(progress, encoding="utf-8") as f:
                rows = [json.loads(line) for line in f if line.strip()]
    if proc.returncode not in (0, 1) or not rows:
        tail = (proc.stderr.strip().splitlines() or ["(no output)"])[-1]
        print(f"    seed {seed}: run failed (exit {proc.returncode}): {tail}", flush=True)
        return SeedResult(seed, False, None, None, None, 0, 0.0, proc.returncode)
    curve = [(r["env_steps"], r["time_s"], r[target.metric]) for r in rows
             if isinstance(r.get(target.metric), (int, float)) and not isinstance(r[target.metric], bool)]
    first = next((r for r in rows if target.reached(r)), None)
    reached = first is not None and (target.env_steps is None or first["env_steps"] <= target.env_steps) and (
        target.time_s is None or first["time_s"] <= target.time_s)
    last = rows[-1]
    return SeedResult(
        seed, reached, _last_value(rows, target.metric),
        first["env_steps"] if first else None, round(first["time_s"], 3) if first else None,
        last["env_steps"], round(last["time_s"], 3), proc.returncode, curve,
    )


@dataclasses.dataclass
class SeedTask:
    """One (example, seed) run, picklable for a Ray task."""

    experiment: Experiment
    seed: int
    train_command: list[str]
    """The train entry point, e.g. ``[python, -m, rlfleet.scripts.train]``."""
    overrides: list[str]

    def __call__(self) -> SeedResult:
        return run_seed(self.experiment, self.seed, self.train_command, self.overrides)


def _run_task(task: SeedTask) -> SeedResult:
    return task()


def run_all(tasks: list[SeedTask], runtime: Any, report: Callable[[SeedTask, SeedResult], None]) -> list[SeedResult]:
    """Every task, through ``runtime.map_unordered`` (one after another locally, in
    parallel on Ray); ``report`` sees each result as it arrives."""
    results: list[SeedResult | None] = [None] * len(tasks)
    for i, result in runtime.map_unordered(_run_task, tasks):
        results[i] = result
        report(tasks[i], result)
    return results  # type: ignore[return-value]


def _median(values: list[Any]) -> Any:
    present = [v for v in values if v is not None]
    return statistics.median(present) if present else None


def summarise(path: str, results: list[SeedResult]) -> dict[str, Any]:
    return {
        "passed": all(r.reached for r in results),
        "seeds_passed": sum(r.reached for r in results),
        "seeds": [{k: v for k, v in dataclasses.asdict(r).items() if k != "curve"} for r in results],
        "median_final_return": _median([r.final_return for r in results]),
        "median_env_steps_to_threshold": _median([r.env_steps_to_threshold for r in results]),
        "median_seconds_to_threshold": _median([r.seconds_to_threshold for r in results]),
    }


def compare(current: dict[str, Any], baseline: dict[str, Any], tolerance: float) -> tuple[list[str], list[str]]:
    """(regressions, notes) of ``current`` against ``baseline`` (summaries keyed by path).

    A regression is a pass that became a fail, or env steps to the threshold worse by more
    than ``tolerance``: deterministic for a seed, whatever else the machine is doing. Wall
    seconds are not judged against a file recorded on another day (a loaded shared machine
    doubles them; seen: 8.0 s against 3.9 s for the same env steps); they come back as notes.
    Time is judged against a reference run in the same invocation (scripts/bench.py).
    """
    problems, notes = [], []
    for path, base in baseline.items():
        cur = current.get(path)
        if cur is None:
            continue
        if base["passed"] and not cur["passed"]:
            problems.append(f"{path}: passed in the baseline, fails now")
            continue
        b, c = base.get("median_env_steps_to_threshold"), cur.get("median_env_steps_to_threshold")
        if b and c and c > b * (1.0 + tolerance):
            problems.append(f"{path}: env steps to threshold {c:g} vs baseline {b:g} (+{100 * (c / b - 1):.0f}%, "
                            f"tolerance {100 * tolerance:.0f}%)")
        b, c = base.get("median_seconds_to_threshold"), cur.get("median_seconds_to_threshold")
        if b and c:
            notes.append(f"{path}: seconds to threshold {c:g} vs baseline {b:g} ({c / b:.2f}x; not judged: "
                         "wall time depends on the machine's load)")
    return problems, notes


def format_table(summaries: dict[str, dict[str, Any]], regressions: list[str]) -> str:
    head = f"{'example':42s} {'seeds':>6s} {'return':>9s} {'steps to thr':>13s} {'s to thr':>9s}  result"
    lines = [head, "-" * len(head)]
    for path, s in summaries.items():
        fmt = lambda v, spec: format(v, spec) if v is not None else "-"  # noqa: E731
        verdict = "PASS" if s["passed"] else "FAIL"
        if any(r.startswith(path + ":") for r in regressions):
            verdict += " REGRESSION"
        lines.append(f"{os.path.relpath(path):42s} {s['seeds_passed']:>2d}/{len(s['seeds']):<3d} "
                     f"{fmt(s['median_final_return'], '9.1f')} {fmt(s['median_env_steps_to_threshold'], '13.0f')} "
                     f"{fmt(s['median_seconds_to_threshold'], '9.1f')}  {verdict}")
    return "\n".join(lines)


def machine() -> dict[str, Any]:
    return {"date": time.strftime("%Y-%m-%d"), "cpu_count": os.cpu_count(), "python": platform.python_version(),
            "platform": platform.platform()}

"""LM rollouts, synchronous against asynchronous (``python scripts/bench.py lm-async``).

GRPO on text-addition (its tuned example, with the reference's log-probs computed in the
runners: ``reference_in_runners``, the faster setting for both modes here) with 2
generator runners on Ray, each run a fresh ``scripts/train.py`` process trained to the
same number of completions, sync and async alternating per seed, at every ``--threads``
count of torch threads per process (each mode is judged at its best). Async runs queue
``--async-requests`` requests per runner with ``--async-staleness`` as max_staleness.

Reported per mode: trained tokens/s (generated, less those of completions dropped as
stale) between the first and the last iteration (so Ray's start and the warm-up are
out), the final reward (the mean over the last 512 completions) with its standard error
over seeds, and the machine's CPU use during the run (from /proc/stat: the share of all
cores busy).
"""

from __future__ import annotations

import json
import math
import os
import statistics
import subprocess
import sys
import tempfile
from typing import Any

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
EXAMPLE = os.path.join(ROOT, "tuned_examples", "grpo", "text-addition.yaml")


def _cpu_times() -> tuple[int, int]:
    with open("/proc/stat", encoding="ascii") as f:
        fields = [int(x) for x in f.readline().split()[1:]]
    idle = fields[3] + fields[4]  # idle + iowait
    return sum(fields) - idle, sum(fields)


def run(mode: str, seed: int, completions: int, requests: int = 1, staleness: int = 1,
        extra: tuple[str, ...] = ()) -> dict[str, Any]:
    with tempfile.TemporaryDirectory() as logdir:
        cmd = [sys.executable, os.path.join(ROOT, "scripts", "train.py"), "--config", EXAMPLE, "--seed", str(seed),
               "--num-env-runners", "2", "--set", f"async_rollouts={'true' if mode == 'async' else 'false'}",
               "--set", f"max_staleness={staleness}", "--set", f"requests_per_runner={requests}", "--stop-timesteps", str(completions), "--logdir", os.path.join(logdir, "run"),
               "--quiet"] + [a for pair in extra for a in ("--set", pair)]
        busy0, total0 = _cpu_times()
        proc = subprocess.run(cmd, capture_output=True, text=True)
        busy1, total1 = _cpu_times()
        if proc.returncode not in (0, 1):
            sys.exit(f"{mode} seed {seed} failed (exit {proc.returncode}): {proc.stderr.strip().splitlines()[-1:]}")
        with open(os.path.join(logdir, "run", "progress.jsonl"), encoding="utf-8") as f:
            rows = [json.loads(line) for line in f]
    first, last = rows[0], rows[-1]
    return {
        # trained tokens: a stale completion that was generated and dropped does not count
        "tokens_per_s": (last["tokens_trained_total"] - first["tokens_trained_total"])
        / max(last["time_s"] - first["time_s"], 1e-9),
        "reward": last["episode_return_mean"], "completions": last["env_steps"],
        "stale": last.get("num_stale_completions", 0), "seconds": last["time_s"],
        "cpu_busy": (busy1 - busy0) / max(total1 - total0, 1),
    }


def main(args: Any) -> None:
    # (mode, torch_threads) -> one result per seed; each mode is then judged at its best thread count
    results: dict[tuple[str, int], list[dict[str, Any]]] = {}
    for threads in args.threads:
        for seed in range(args.seeds):
            for mode in (("sync", "async") if seed % 2 == 0 else ("async", "sync")):
                extra = (*args.set, f"torch_threads={threads}")
                r = (run(mode, seed, args.completions, args.async_requests, args.async_staleness,
                         extra + tuple(args.async_set))
                     if mode == "async"
                     else run(mode, seed, args.completions, extra=extra))
                results.setdefault((mode, threads), []).append(r)
                print(f"threads {threads} seed {seed} {mode:5s}: {r['tokens_per_s']:8.1f} tokens/s, reward "
                      f"{r['reward']:.3f}, {r['completions']} completions ({r['stale']} stale dropped) in "
                      f"{r['seconds']:.1f} s, CPU {100 * r['cpu_busy']:.0f}% of {os.cpu_count()} cores", flush=True)
    summary = {}
    for mode in ("sync", "async"):
        by_threads = {t: statistics.median(r["tokens_per_s"] for r in results[(mode, t)]) for t in args.threads}
        best = max(by_threads, key=by_threads.__getitem__)
        rs = results[(mode, best)]
        rewards = [r["reward"] for r in rs]
        se = statistics.stdev(rewards) / math.sqrt(len(rewards)) if len(rewards) > 1 else float("nan")
        summary[mode] = {"tokens_per_s": by_threads[best], "reward": statistics.mean(rewards), "se": se,
                         "cpu": statistics.median(r["cpu_busy"] for r in rs)}
        others = ", ".join(f"{by_threads[t]:.1f} with {t}" for t in args.threads if t != best)
        print(f"{mode:5s}: median {by_threads[best]:.1f} tokens/s with torch_threads {best}"
              + (f" (best; {others})" if others else "")
              + f", reward {summary[mode]['reward']:.3f} +- {se:.3f} (SE over {len(rs)} seeds), "
              f"CPU {100 * summary[mode]['cpu']:.0f}%")
    ratio = summary["async"]["tokens_per_s"] / summary["sync"]["tokens_per_s"]
    gap = abs(summary["async"]["reward"] - summary["sync"]["reward"])
    se = math.hypot(summary["async"]["se"], summary["sync"]["se"])
    print(f"async / sync tokens/s: {ratio:.2f}x (goal >= 1.3); reward gap {gap:.3f} vs 2 SE {2 * se:.3f} "
          f"({'within' if gap <= 2 * se else 'OUTSIDE'})")

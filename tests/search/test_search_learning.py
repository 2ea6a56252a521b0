"""The search demo: the PPO CartPole example with lr 1e-5 fails its pass criterion; 8
samples of lr and num_epochs under ASHA find a config whose best.yaml passes on 3 seeds."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time

import pytest

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
UNTUNED = os.path.join(REPO, "tests", "search", "cartpole_untuned.yaml")


def regression(path: str, seeds: int, out: str) -> dict:
    proc = subprocess.run([sys.executable, os.path.join(REPO, "scripts", "run_regression.py"), path, "--seeds",
                           str(seeds), "--out", out], capture_output=True, text=True, timeout=1800)
    print(proc.stdout[-2000:])
    with open(out, encoding="utf-8") as f:
        return {"rc": proc.returncode, **json.load(f)}


@pytest.mark.learning
def test_a_search_turns_a_failing_example_into_a_passing_one(tmp_path):
    base = regression(UNTUNED, 1, str(tmp_path / "base.json"))
    assert base["rc"] != 0, "the untuned base passed: the demo has nothing to find"
    started = time.perf_counter()
    logdir = str(tmp_path / "search")
    proc = subprocess.run([sys.executable, os.path.join(REPO, "scripts", "tune.py"), "--config", UNTUNED,
                           "--num-samples", "8", "--scheduler", "asha", "--logdir", logdir, "--seed", "0"],
                          capture_output=True, text=True, timeout=1800)
    wall = time.perf_counter() - started
    print(proc.stdout[-6000:], f"\nsearch wall: {wall:.0f} s")
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert wall < 15 * 60
    best = regression(os.path.join(logdir, "best.yaml"), 3, str(tmp_path / "best.json"))
    assert best["rc"] == 0

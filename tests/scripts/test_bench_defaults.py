"""The broad defaults benchmark's bookkeeping (issue 31): the collapse rule, the results
file (the last run of a key wins) and the table regenerated from it."""

import json
import os
import subprocess
import sys

import pytest

from scripts import bench_defaults as bd

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


@pytest.mark.parametrize("final, best, random, collapsed", [
    (100.0, 200.0, -200.0, True),    # 200 - 0.2 * 400 = 120 > 100
    (120.0, 200.0, -200.0, False),   # exactly at the line is not a collapse
    (-122.7, 21.9, -180.0, True),    # issue 31's LunarLander run: line 21.9 - 0.2 * 201.9 = -18.48
    (-90.0, -80.0, -500.0, False),   # negative returns: line -80 - 0.2 * 420 = -164
    (-200.0, -200.0, -200.0, False),  # never learned (MountainCar): best = random, nothing to lose
    (50.0, None, -100.0, False),     # no full window ever: no best to fall from
])
def test_collapse_rule(final, best, random, collapsed):
    assert bd.collapsed(final, best, random) is collapsed


def _row(task, library, algo, seed, final, best, wall, commit="a"):
    return {"task": task, "library": library, "algo": algo, "seed": seed, "final": final, "best": best,
            "env_steps": 1000, "wall_s": wall, "commit": commit}


@pytest.fixture
def results(tmp_path):
    path = str(tmp_path / "r.jsonl")
    for row in [
        {"task": "CartPole-v1", "library": "random", "mean": 22.0, "episodes": 100},
        {"task": "LunarLander-v3", "library": "random", "mean": -180.0, "episodes": 100},
        _row("CartPole-v1", "sb3", "ppo", 0, 480.0, 500.0, 60.0),
        _row("CartPole-v1", "rlfleet", "ppo", 0, 100.0, 500.0, 20.0, commit="old"),  # replaced below
        _row("CartPole-v1", "rlfleet", "ppo", 0, 500.0, 500.0, 21.0, commit="new"),
        _row("LunarLander-v3", "sb3", "ppo", 0, 102.0, 110.0, 477.0),
        _row("LunarLander-v3", "rlfleet", "ppo", 0, -122.7, 21.9, 69.0),
        _row("LunarLander-v3", "rlfleet", "dqn", 0, 50.0, 60.0, 300.0),
    ]:
        bd.append(path, row)
    return path


def test_the_last_run_of_a_key_replaces_earlier_ones(results):
    rows = bd.load(results)
    assert rows[("CartPole-v1", "rlfleet", "ppo", 0)]["commit"] == "new"
    assert rows[("CartPole-v1", "random", None, None)]["mean"] == 22.0
    assert len(rows) == 7


def test_table_counts_wins_flags_collapse_and_marks_what_did_not_run(results):
    suite = {"CartPole-v1": bd.Task(100_000), "LunarLander-v3": bd.Task(300_000),
             "MiniGrid-Empty-8x8-v0": bd.Task(300_000, sb3=False, reference="SB3 cannot run it")}
    text = bd.table(suite, bd.load(results), 20)
    lines = {line.split(" | ")[0].lstrip("| "): line for line in text.splitlines() if line.startswith("| ")}
    cart, lunar, grid = lines["CartPole-v1"], lines["LunarLander-v3"], lines["MiniGrid-Empty-8x8-v0"]
    assert "| 500.0 / 500.0 |" in cart and "| 21 / 60 | yes |" in cart  # the newer run, faster and higher
    assert "| -122.7 / 21.9 C1 |" in lunar and "| no |" in lunar       # collapsed, below SB3's 102
    assert "| 50.0 / 60.0 |" in lunar                                  # DQN's column
    assert "cannot run (SB3 cannot run it)" in grid
    assert "1 of 2 tasks compared" in text


def test_table_only_reads_the_results_file(results):
    out = subprocess.run([sys.executable, "scripts/bench.py", "defaults", "--suite", "broad", "--table",
                          "--results", results], cwd=REPO, capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    assert "| LunarLander-v3 | tune | 300k | -180.0 | 102.0 / 110.0 |" in out.stdout
    assert "| MinAtar/Breakout-v1 | tune | 1000k | - | - |" in out.stdout  # not run yet


def test_a_task_outside_the_suite_is_one_line_naming_the_suite(tmp_path):
    out = subprocess.run([sys.executable, "scripts/bench.py", "defaults", "--suite", "broad", "--tasks", "Pong-v5",
                          "--only", "rlfleet", "--results", str(tmp_path / "r.jsonl")], cwd=REPO,
                         capture_output=True, text=True, timeout=120)
    assert out.returncode != 0
    assert out.stderr.strip().startswith("bench defaults: 'Pong-v5' is not in suite 'broad' (its tasks: CartPole-v1,")
    assert not (tmp_path / "r.jsonl").exists()


def test_the_committed_results_file_is_readable_and_names_suite_tasks_only():
    path = bd.results_path("broad")
    if not os.path.exists(path):
        pytest.skip("no broad results committed yet")
    for key, row in bd.load(path).items():
        assert row["task"] in bd.SUITES["broad"], key
        assert row["library"] in ("random", "sb3", "rlfleet"), key
        json.dumps(row)

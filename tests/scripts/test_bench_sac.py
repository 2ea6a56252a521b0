"""The SAC benchmark's bookkeeping (scripts/bench_sac.py): task specs, what it reads from
train.py's output and progress rows and from SB3's peer line, the results file (the last
run of a key wins) and the table's medians, against hand-computed numbers. Nothing trains
and SB3 is not needed."""

import json
import os
import subprocess
import sys

import pytest

from scripts import bench_sac as bs

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def test_a_task_is_env_and_budget_split_at_the_last_colon():
    assert bs.parse_task("Pendulum-v1:20000") == bs.Task("Pendulum-v1", 20_000)
    assert bs.parse_task("my_pkg.envs:Walker-v0:500") == bs.Task("my_pkg.envs:Walker-v0", 500)


@pytest.mark.parametrize("spec", ["Pendulum-v1", "Pendulum-v1:", ":20000", "Pendulum-v1:0", "Pendulum-v1:2e4",
                                  "Pendulum-v1:-5"])
def test_a_bad_task_names_the_form(spec):
    with pytest.raises(ValueError, match=r"ENV:STEPS"):
        bs.parse_task(spec)


def test_the_evaluation_return_comes_from_trains_evaluation_line():
    stdout = ("training sac on Pendulum-v1 (defaults); logs in /tmp/x/run\n"
              "evaluation: return -153.27 over 10 episodes\n"
              "done: 313 iterations, 20032 env steps, 301.4 s, return -171.02 (last 100 episodes), best nan; "
              "checkpoint /tmp/x/run/checkpoint/checkpoint.pt\n")
    assert bs.parse_evaluation(stdout) == -153.27
    with pytest.raises(ValueError, match="evaluation"):
        bs.parse_evaluation("done: 3 iterations, return -1200.00 (last 100 episodes)\n")


def test_grad_steps_are_summed_over_iterations_and_the_wall_is_the_last_time_s():
    # 4 iterations of 64 env steps; the buffer fills during the first two (no grad steps:
    # the key is absent, then null), then 64 per iteration.
    rows = [
        {"iteration": 1, "env_steps": 64, "time_s": 0.04, "episode_return_mean": None},
        {"iteration": 2, "env_steps": 128, "time_s": 0.08, "episode_return_mean": None,
         "learner/num_grad_steps": None},
        {"iteration": 3, "env_steps": 192, "time_s": 1.5, "episode_return_mean": -1300.0,
         "learner/num_grad_steps": 64},
        {"iteration": 4, "env_steps": 256, "time_s": 2.75, "episode_return_mean": -1250.5,
         "learner/num_grad_steps": 64},
    ]
    assert bs.progress_summary(rows) == {"env_steps": 256, "train_s": 2.75, "grad_steps": 128,
                                         "final_return": -1250.5}
    with pytest.raises(ValueError, match="no progress rows"):
        bs.progress_summary([])


def test_the_sb3_side_is_its_last_stdout_line():
    line = {"peer": "sb3-sac", "env": "Pendulum-v1", "seed": 1, "env_steps": 20000, "eval_return": -148.5,
            "final_return": -180.25, "wall_s_in_process": 250.0, "train_s": 240.5, "grad_steps": 19900}
    out = "some warning on stdout\n" + json.dumps(line) + "\n"
    assert bs.sb3_summary(out) == {"env_steps": 20000, "train_s": 240.5, "grad_steps": 19900,
                                   "final_return": -180.25, "eval_return": -148.5}


def test_commands_are_the_briefed_ones():
    ours = bs._ours_cmd(bs.Task("Pendulum-v1", 20_000), 2, "/tmp/l/run")
    assert ours[1].endswith(os.path.join("scripts", "train.py"))
    assert ours[2:] == ["--algo", "sac", "--env", "Pendulum-v1", "--defaults", "--seed", "2", "--stop-timesteps",
                        "20000", "--eval", "--quiet", "--logdir", "/tmp/l/run"]
    sb3 = bs._sb3_cmd("/venv/bin/python", bs.Task("Pendulum-v1", 20_000), 2)
    assert sb3[0] == "/venv/bin/python" and sb3[1].endswith(os.path.join("scripts", "peers", "sb3_sac.py"))
    assert sb3[2:] == ["--env", "Pendulum-v1", "--seed", "2", "--steps", "20000", "--window", "100"]


def _row(task, library, seed, eval_return, wall, train, grad, budget=20_000, commit="a"):
    return {"task": task, "budget": budget, "library": library, "seed": seed, "eval_return": eval_return,
            "final_return": None, "wall_s": wall, "train_s": train, "grad_steps": grad, "env_steps": budget,
            "commit": commit}


@pytest.fixture
def results(tmp_path):
    path = str(tmp_path / "sac.jsonl")
    for row in [
        _row("Pendulum-v1", "rlfleet", 0, -900.0, 999.0, 990.0, 19072, commit="old"),  # replaced below
        _row("Pendulum-v1", "rlfleet", 0, -150.0, 300.0, 100.0, 20_000, commit="new"),  # 5.0 ms per grad step
        _row("Pendulum-v1", "rlfleet", 1, -170.0, 320.0, 120.0, 20_000),                # 6.0
        _row("Pendulum-v1", "rlfleet", 2, -160.0, 310.0, 80.0, 20_000),                 # 4.0
        _row("Pendulum-v1", "sb3", 0, -140.0, 200.0, 60.0, 20_000),                     # 3.0
        _row("Pendulum-v1", "sb3", 1, -200.0, 250.0, 20.0, 10_000),                     # 2.0
        _row("Pendulum-v1", "sb3", 2, -145.0, 150.0, 25.0, 5_000),                      # 5.0
        _row("HalfCheetah-v5", "rlfleet", 0, 1000.0, 900.0, 850.0, 99_000, budget=100_000),
        _row("HalfCheetah-v5", "rlfleet", 1, 2000.0, 1100.0, 1050.0, 99_000, budget=100_000),
        _row("Pendulum-v1", "rlfleet", 0, -300.0, 40.0, 30.0, 0, budget=1_000),  # no grad step yet
    ]:
        bs.append(path, row)
    return path


def test_the_last_run_of_a_key_replaces_earlier_ones(results):
    rows = bs.load(results)
    assert len(rows) == 9
    assert rows[("Pendulum-v1", 20_000, "rlfleet", 0)]["commit"] == "new"
    assert rows[("Pendulum-v1", 1_000, "rlfleet", 0)]["eval_return"] == -300.0  # another budget, its own key


def test_medians_over_seeds(results):
    rows = bs.load(results)
    ours = bs.medians([r for k, r in rows.items() if k[:3] == ("Pendulum-v1", 20_000, "rlfleet")])
    sb3 = bs.medians([r for k, r in rows.items() if k[:3] == ("Pendulum-v1", 20_000, "sb3")])
    assert ours["eval_return"] == -160.0 and ours["wall_s"] == 310.0 and ours["n"] == 3
    assert ours["s_per_grad_step"] == pytest.approx(0.005)
    assert sb3["eval_return"] == -145.0 and sb3["wall_s"] == 200.0
    # the median of the per-seed ratios (2, 3, 5 ms), not median(train_s) / median(grad_steps) = 2.5 ms
    assert sb3["s_per_grad_step"] == pytest.approx(0.003)
    assert sb3["grad_steps"] == 10_000
    cheetah = bs.medians([r for k, r in rows.items() if k[:3] == ("HalfCheetah-v5", 100_000, "rlfleet")])
    assert cheetah["eval_return"] == 1500.0 and cheetah["wall_s"] == 1000.0  # two seeds: the mean of the middle
    assert bs.medians([]) is None


def _table_lines(text):
    return [line for line in text.splitlines() if line.startswith("| ") and not line.startswith("| task")]


def test_table_has_a_line_per_task_and_budget_with_ratio_and_ms_per_grad_step(results):
    lines = _table_lines(bs.table(bs.load(results)))
    assert lines == [
        "| HalfCheetah-v5 | 100000 | 2 / 0 | 1500.0 | - | 1000.0 | - | - | 9.60 | - | 99000 / - |",
        "| Pendulum-v1 | 1000 | 1 / 0 | -300.0 | - | 40.0 | - | - | - | - | 0 / - |",
        # ratio of median walls: 310 / 200
        "| Pendulum-v1 | 20000 | 3 / 3 | -160.0 | -145.0 | 310.0 | 200.0 | 1.55 | 5.00 | 3.00 | 20000 / 10000 |",
    ]


def test_table_only_reads_the_results_file(results):
    out = subprocess.run([sys.executable, "scripts/bench.py", "sac", "--table", "--results", results,
                          "--sb3-python", "/nonexistent/python"], cwd=REPO, capture_output=True, text=True,
                         timeout=120)
    assert out.returncode == 0, out.stderr
    assert "| Pendulum-v1 | 20000 | 3 / 3 | -160.0 | -145.0 | 310.0 | 200.0 | 1.55 |" in out.stdout


def test_a_bad_task_is_one_line_before_anything_runs(tmp_path):
    out = subprocess.run([sys.executable, "scripts/bench.py", "sac", "--tasks", "Pendulum-v1", "--only", "rlfleet",
                          "--results", str(tmp_path / "r.jsonl")], cwd=REPO, capture_output=True, text=True,
                         timeout=120)
    assert out.returncode != 0
    assert out.stderr.strip() == ("bench sac: a task is ENV:STEPS with STEPS a positive integer "
                                  "(Pendulum-v1:20000), got 'Pendulum-v1'")
    assert not (tmp_path / "r.jsonl").exists()

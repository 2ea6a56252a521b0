"""The engine-free half of search (scripts/tools/search.py): the space and its checks, what a trial
runs, how trials rank, and the tuned example a search ends in; tune.py's bad input."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

from rlfleet.algorithms.ppo import PPOConfig
from rlfleet.rl.config import ConfigError
from rlfleet.scripts.tools.experiment import Criteria, load_experiment
from rlfleet.scripts.tools.regression import validate
from rlfleet.scripts.tools.search import (Spec, TrialSummary, check_pbt, median_summary, parse_search, parse_search_flags, rank,
                               summarize, trial_config, write_best, write_results)
from tests.extras import needs_extra

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
CARTPOLE = os.path.join(REPO, "tuned_examples", "ppo", "CartPole-v1.yaml")
BASE = {"env": "CartPole-v1", "lr": 2e-3, "lr_schedule": [[0, 2e-3], [100_000, 0.0]], "num_envs_per_runner": 16,
        "rollout_fragment_length": 16, "minibatch_size": 128}


def parse(values):
    return parse_search(values, PPOConfig, BASE, source="ex.yaml")


def test_a_space_parses_and_yaml_exponents_without_a_dot_are_numbers():
    specs = parse(parse_search_flags(["lr={loguniform: [1e-4, 3e-3]}", "num_epochs={choice: [4, 10]}",
                                      "hidden_sizes={grid: [[64, 64], [32]]}", "minibatch_size={randint: [32, 257]}"]))
    assert specs["lr"] == Spec("lr", "loguniform", (1e-4, 3e-3))
    assert specs["num_epochs"].args == (4, 10) and specs["hidden_sizes"].args == ((64, 64), (32,))
    assert specs["minibatch_size"].corners() == [32, 256]


@pytest.mark.parametrize("values, message", [
    ({"lrr": {"uniform": [0.1, 0.2]}}, "search key 'lrr' is not a ppo config key; did you mean 'lr'"),
    ({"lr": {"logunifrom": [1e-4, 1e-3]}}, "unknown kind 'logunifrom'; did you mean 'loguniform'"),
    ({"lr": {"loguniform": [0, 1e-3]}}, "loguniform needs low > 0, got 0"),
    ({"lr": {"uniform": [1e-3, 1e-4]}}, "uniform needs low < high"),
    ({"lr": [1e-4, 1e-3]}, "search key 'lr': expected one of"),
    ({"num_epochs": {"randint": [1.5, 4]}}, "randint takes integers"),
    ({"num_epochs": {"choice": [0, 4]}}, "search key 'num_epochs' at 0: "),
    ({"gamma": {"uniform": [0.9, 1.5]}}, "search key 'gamma' at 1.5: "),
    ({"env": {"choice": ["Acrobot-v1"]}}, "search key 'env' cannot be searched"),
])
def test_a_bad_space_is_one_error_naming_the_key(values, message):
    with pytest.raises(ConfigError) as e:
        parse(values)
    assert message in str(e.value) and "\n" not in str(e.value)


def test_a_searched_lr_scales_the_schedule_that_overrides_it():
    specs = parse({"lr": {"loguniform": [1e-4, 1e-2]}})
    config = trial_config(BASE, {"lr": 5e-4}, specs)
    # 2e-3 -> 5e-4 is a factor 1/4 on every point of the schedule
    assert config["lr"] == 5e-4 and config["lr_schedule"] == [[0, 5e-4], [100_000, 0.0]]
    # a searched schedule is taken as sampled
    both = parse({"lr": {"loguniform": [1e-4, 1e-2]}, "lr_schedule": {"choice": [[[0, 1e-3], [10, 0.0]]]}})
    assert trial_config(BASE, {"lr": 5e-4, "lr_schedule": ((0, 1e-3), (10, 0.0))}, both)["lr_schedule"] == [
        (0, 1e-3), (10, 0.0)]
    with pytest.raises(ConfigError, match="starts at 0, so it cannot be scaled"):
        trial_config({**BASE, "lr_schedule": [[0, 0.0], [10, 1e-3]]}, {"lr": 1e-3}, specs)


def test_pbt_refuses_keys_that_shape_the_model():
    check_pbt(parse({"lr": {"loguniform": [1e-4, 1e-2]}, "num_epochs": {"choice": [4, 10]}}))
    with pytest.raises(ConfigError, match="'hidden_sizes' cannot be searched with PBT"):
        check_pbt(parse({"hidden_sizes": {"choice": [[64], [32]]}}))
    with pytest.raises(ConfigError, match="'memory_size' cannot be searched with PBT"):
        check_pbt(parse({"memory_size": {"choice": [64, 128]}}))


def row(steps, ret, t, full=True):
    return {"env_steps": steps, "episode_return_mean": ret, "time_s": t, "episode_window_full": full}


def test_a_trial_is_summarised_at_the_first_row_meeting_the_target_within_its_bounds(tmp_path):
    path = tmp_path / "progress.jsonl"
    rows = [row(1000, float("nan"), 1.0), row(2000, 480.0, 2.0, full=False), row(3000, 476.0, 3.0),
            row(4000, 500.0, 4.0)]
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    s = summarize("t0", {"lr": 1e-3}, str(path), Criteria(475.0, env_steps=5000), status="done")
    assert (s.steps_to_threshold, s.seconds_to_threshold, s.best_return, s.env_steps) == (3000, 3.0, 500.0, 4000)
    late = summarize("t0", {}, str(path), Criteria(475.0, env_steps=2500), status="done")
    assert not late.reached and late.best_return == 500.0  # reached only past the env-step bound
    missing = summarize("t1", {}, str(tmp_path / "none.jsonl"), Criteria(475.0), status="failed")
    assert missing.best_return is None and missing.env_steps == 0


def trial(tid, steps=None, secs=None, best=None, status="done"):
    return TrialSummary(tid, {}, status, best, 0, 0.0, steps, secs)


def test_trials_rank_by_reached_then_steps_then_seconds_then_best_return():
    trials = [trial("miss-high", best=400.0), trial("slow", 9000, 9.0, 500.0), trial("fast", 5000, 7.0, 480.0),
              trial("fast-but-slower", 5000, 8.0, 490.0), trial("crashed", best=450.0, status="failed"),
              trial("miss-low", best=100.0), trial("nothing")]
    assert [t.trial_id for t in rank(trials)] == ["fast", "fast-but-slower", "slow", "miss-high", "miss-low",
                                                  "nothing", "crashed"]


def test_a_config_over_seeds_is_judged_by_its_medians_a_miss_counting_as_worst():
    seeds = [trial("a", 4000, 4.0, 480.0), trial("b", 6000, 5.0, 490.0), trial("c", None, None, 300.0)]
    m = median_summary("cfg", {"lr": 1e-3}, seeds)
    assert m.steps_to_threshold == 6000 and m.seconds_to_threshold == 5.0 and m.best_return == 480.0
    two_misses = median_summary("cfg", {}, [seeds[0], seeds[2], trial("d", best=200.0)])
    assert not two_misses.reached


def test_best_yaml_changes_only_the_searched_keys_and_runs_as_a_tuned_example(tmp_path):
    specs = parse({"lr": {"loguniform": [1e-4, 1e-2]}, "num_epochs": {"choice": [4, 12]}})
    winner = TrialSummary("t3", {"lr": 1.23456789e-3, "num_epochs": 4}, "done", 500.0, 60000, 20.0, 50000, 15.0)
    assert load_experiment(CARTPOLE).config["num_epochs"] != 4  # the winner's value is a change
    best = tmp_path / "best.yaml"
    write_best(str(best), CARTPOLE, winner, specs, note="best of a test search")
    source, out = load_experiment(CARTPOLE), validate(str(best), lambda algo, env: PPOConfig)
    assert out.stop == source.stop and out.pass_criteria == source.pass_criteria and out.tags == source.tags
    changed = {k for k in set(out.config) | set(source.config) if out.config.get(k) != source.config.get(k)}
    assert changed == {"lr", "num_epochs", "lr_schedule"}
    assert out.config["lr"] == 1.23457e-3 and out.config["lr_schedule"][0] == [0, 1.23457e-3]
    text = best.read_text()
    assert text.startswith("# best of a test search\n# lr is searched under an lr_schedule")


def test_the_results_table_is_written_as_csv_and_markdown(tmp_path):
    ranked = rank([trial("slow", 9000, 9.0, 500.0), trial("fast", 5000, 7.0, 480.0)])
    text = write_results(str(tmp_path), ranked)
    assert text.splitlines()[1].split()[:2] == ["1", "fast"]
    lines = (tmp_path / "results.csv").read_text().splitlines()
    assert lines[0].startswith("rank,trial,status,params,best_return,steps_to_threshold") and lines[1].startswith("1,fast")
    assert (tmp_path / "results.md").read_text().count("\n") == 4


def tune_py(*args, cwd=REPO):
    return subprocess.run([sys.executable, os.path.join(REPO, "scripts", "tune.py"), *args], cwd=cwd,
                          capture_output=True, text=True, timeout=120)


@pytest.mark.parametrize("args, message", [
    (["--config", CARTPOLE, "--search", "lrr={uniform: [0.1, 0.2]}"], "search key 'lrr' is not a ppo config key"),
    (["--config", CARTPOLE, "--search", "lr"], "--search expects KEY=SPEC, got 'lr'"),
    (["--config", CARTPOLE], "nothing to search"),
    (["--config", CARTPOLE, "--search", "lr={uniform: [1e-4, 1e-3]}", "--scheduler", "hyperband"],
     "unknown scheduler 'hyperband'"),
    (["--config", CARTPOLE, "--search", "hidden_sizes={choice: [[8]]}", "--scheduler", "pbt"],
     "'hidden_sizes' cannot be searched with PBT"),
    (["--config", os.path.join(REPO, "tuned_examples", "impala", "CartPole-v1.yaml"), "--search",
      "lr={uniform: [1e-4, 1e-3]}", "--num-cpus", "2"], "a trial needs 3 CPUs (1 for the trial + 2 env runner"),
    pytest.param(["--config", CARTPOLE, "--search", "lr={grid: [1e-3, 2e-3]}", "--search-alg", "optuna"],
                 "a 'grid' spec needs --search-alg none", marks=needs_extra("tune", "optuna")),
    (["--resume"], "--resume needs --logdir"),
    (["--resume", "--logdir", "/nonexistent/search"], "holds no search (no search.json)"),
])
def test_tune_py_bad_input_exits_2_with_one_line(args, message, tmp_path):
    proc = tune_py(*args, cwd=str(tmp_path))
    assert proc.returncode == 2, proc.stderr
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("tune.py: error: ") and message in lines[0]
    assert os.listdir(tmp_path) == []  # no directory made for a search that never started


def test_tune_py_refuses_a_directory_that_holds_files_and_changes_nothing(tmp_path):
    (tmp_path / "progress.jsonl").write_text("{}\n")
    proc = tune_py("--config", CARTPOLE, "--search", "lr={uniform: [1e-4, 1e-3]}", "--logdir", str(tmp_path))
    assert proc.returncode == 2 and "already holds files; continue a search there with --resume" in proc.stderr
    assert os.listdir(tmp_path) == ["progress.jsonl"] and (tmp_path / "progress.jsonl").read_text() == "{}\n"



def test_criteria_on_any_progress_key_need_metric_and_threshold_together():
    c = Criteria.from_dict({"metric": "evaluation/agents/p1/win_rate", "threshold": 0.9, "env_steps": 1000}, source="x")
    assert c.reached({"evaluation/agents/p1/win_rate": 0.92, "episode_window_full": False})  # no return window
    assert not c.reached({"evaluation/agents/p1/win_rate": 0.85}) and not c.reached({"episode_return_mean": 1.0})
    for values, message in (({"threshold": 0.9}, "threshold needs metric"),
                            ({"metric": "m", "episode_return_mean": 1.0}, "give the target as threshold"),
                            ({"metric": 3, "threshold": 1.0}, "metric must be a progress-row key")):
        with pytest.raises(ConfigError, match=message):
            Criteria.from_dict(values, source="x")

"""Searches on Ray Tune as a user runs them (scripts/tune.py in a subprocess): a search
that ends in a table and a tuned example, PBT's exploit and explore taking effect in the
learner, and a search whose driver is SIGKILLed, resumed without training a finished
trial twice."""

from __future__ import annotations

import json
import re
import math
import os
import signal
import subprocess
import sys
import time

import pytest

from rlfleet.algorithms.ppo import PPOConfig
from rlfleet.scripts.tools.regression import validate
from tests.extras import require_extra

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
CARTPOLE = os.path.join(REPO, "tuned_examples", "ppo", "CartPole-v1.yaml")
TUNE = [sys.executable, os.path.join(REPO, "scripts", "tune.py")]

require_extra("tune", "ray.tune")


def rows(path: str) -> list[dict]:
    with open(path, encoding="utf-8") as f:
        return [json.loads(line) for line in f if line.strip()]


def trials(directory: str) -> dict[str, str]:
    root = os.path.join(directory, "trials")
    return {t: os.path.join(root, t) for t in sorted(os.listdir(root))}


def test_a_fifo_search_ends_in_a_ranked_table_and_a_tuned_example(tmp_path):
    logdir = str(tmp_path / "search")
    proc = subprocess.run([*TUNE, "--config", CARTPOLE, "--search", "lr={grid: [3.0e-3, 1.0e-5]}", "--num-samples", "1",
                           "--stop-timesteps", "2048", "--num-cpus", "2", "--logdir", logdir],
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 1, proc.stderr[-2000:]  # 2,048 steps reach no 475: the run says so
    finished = [line for line in proc.stdout.splitlines() if line.startswith("[search] trial") and "started" not in line]
    assert len(finished) == 2 and "running 0, done 2, failed 0, best" in finished[-1]
    with open(os.path.join(logdir, "results.csv"), encoding="utf-8") as f:
        table = f.read().splitlines()
    assert len(table) == 3 and ",lr=0.003," in table[1] and ",lr=1e-05," in table[2]  # the higher lr learned more
    for directory in trials(logdir).values():
        progress = rows(os.path.join(directory, "run", "progress.jsonl"))
        assert progress[-1]["env_steps"] >= 2048 and [r["iteration"] for r in progress] == list(range(1, len(progress) + 1))
        assert os.path.exists(os.path.join(directory, "summary.json"))
    best = validate(os.path.join(logdir, "best.yaml"), lambda algo, env: PPOConfig)
    assert best.config["lr"] == 3.0e-3 and best.config["lr_schedule"][0] == [0, 3.0e-3]
    assert os.path.exists(os.path.join(logdir, "results.md")) and os.path.exists(os.path.join(logdir, "search.json"))


def test_pbt_exploit_copies_the_donors_weights_and_the_learner_uses_the_perturbed_lr(tmp_path):
    logdir = str(tmp_path / "pbt")
    proc = subprocess.run([*TUNE, "--config", CARTPOLE, "--set", "lr_schedule=null",
                           "--search", "lr={loguniform: [1.0e-5, 1.0e-2]}", "--num-samples", "2", "--scheduler", "pbt",
                           "--perturbation-interval", "1024", "--stop-timesteps", "8192", "--num-cpus", "2",
                           "--seed", "1", "--logdir", logdir], capture_output=True, text=True, timeout=600)
    assert proc.returncode in (0, 1), proc.stderr[-3000:]
    with open(os.path.join(logdir, "results.csv"), encoding="utf-8") as f:
        assert ",failed," not in f.read()  # an exploit that cannot restore its donor's checkpoint fails the trial
    saved = {}  # weights digest -> trial that checkpointed them
    for tid, directory in trials(logdir).items():
        for c in rows(os.path.join(directory, "checkpoints.jsonl")):
            saved.setdefault(c["weights"], tid)
    exploits = []
    for tid, directory in trials(logdir).items():
        starts = rows(os.path.join(directory, "starts.jsonl"))
        progress = rows(os.path.join(directory, "run", "progress.jsonl"))
        for row in progress:
            # the row's maker: the last start before it in time that resumed from an earlier
            # iteration (each start drops the rows after the iteration it restored)
            maker = [s for s in starts if s["iteration"] < row["iteration"]][-1]
            # the learner trains with its start's lr, read from the learner's metrics
            assert row["learner/lr"] == pytest.approx(maker["params"]["lr"], rel=1e-6), (tid, row["iteration"])
        for before, start in zip(starts, starts[1:]):
            copied = start.get("restored") and saved.get(start["weights"], tid) != tid  # another trial's weights
            if copied and start["params"]["lr"] != before["params"]["lr"]:  # explore may land on the old lr
                exploits.append(tid)
    assert exploits, "no trial exploited another with a new lr within the budget"


def test_a_killed_search_resumes_without_training_a_finished_trial_twice(tmp_path):
    logdir = str(tmp_path / "resume")
    args = ["--config", CARTPOLE, "--search", "lr={grid: [1.0e-3, 2.0e-3, 3.0e-3, 4.0e-3]}", "--num-samples", "1",
            "--stop-timesteps", "6144", "--num-cpus", "1", "--logdir", logdir]
    driver = subprocess.Popen([*TUNE, *args], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 240
    done = []
    while time.monotonic() < deadline and len(done) < 2:
        time.sleep(0.5)
        if os.path.isdir(os.path.join(logdir, "trials")):
            done = [t for t, d in trials(logdir).items() if os.path.exists(os.path.join(d, "summary.json"))]
    driver.send_signal(signal.SIGKILL)
    driver.wait()
    assert len(done) >= 2, "the search did not finish 2 trials before the kill"
    finished_before = set(done)
    resumed = subprocess.run([*TUNE, "--resume", "--logdir", logdir], capture_output=True, text=True, timeout=600)
    assert resumed.returncode in (0, 1), resumed.stderr[-3000:]
    all_trials = trials(logdir)
    assert len(all_trials) == 4
    for tid, directory in all_trials.items():
        assert os.path.exists(os.path.join(directory, "summary.json")), f"trial {tid} never finished"
        trained = [s for s in rows(os.path.join(directory, "starts.jsonl")) if "skipped" not in s]
        progress = rows(os.path.join(directory, "run", "progress.jsonl"))
        iterations = [r["iteration"] for r in progress]
        assert iterations == list(range(1, len(iterations) + 1)), f"trial {tid} logged iterations twice: {iterations}"
        if tid in finished_before:
            assert len(trained) == 1, f"finished trial {tid} trained again after the resume"
    with open(os.path.join(logdir, "results.csv"), encoding="utf-8") as f:
        assert len(f.read().splitlines()) == 5


def test_a_trial_with_ray_env_runners_gets_them_inside_its_placement_group(tmp_path):
    logdir = str(tmp_path / "impala")
    impala = os.path.join(REPO, "tuned_examples", "impala", "CartPole-v1.yaml")
    proc = subprocess.run([*TUNE, "--config", impala, "--search", "lr={grid: [1.0e-3]}", "--num-samples", "1",
                           "--stop-timesteps", "2048", "--num-cpus", "2", "--cpus-per-trial", "0.5",
                           "--set", "num_cpus_per_runner=0.5", "--logdir", logdir],
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 1, proc.stderr[-3000:]
    (directory,) = trials(logdir).values()
    last = rows(os.path.join(directory, "run", "progress.jsonl"))[-1]
    assert last["env_runners/0/env_steps"] > 0 and last["env_runners/1/env_steps"] > 0  # both Ray runners sampled


def test_a_crashing_trial_is_recorded_as_failed_and_the_search_goes_on(tmp_path):
    logdir = str(tmp_path / "crash")
    proc = subprocess.run([*TUNE, "--config", CARTPOLE, "--search", "env_config={grid: [{}, {bogus_kwarg: 1}]}",
                           "--num-samples", "1", "--stop-timesteps", "1024", "--num-cpus", "2", "--logdir", logdir],
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 1, proc.stderr[-3000:]
    with open(os.path.join(logdir, "results.csv"), encoding="utf-8") as f:
        table = f.read().splitlines()
    assert table[1].split(",")[2] == "done" and table[2].split(",")[2] == "failed"
    assert "running 0, done 1, failed 1" in proc.stdout
    failed_line = next(line for line in proc.stdout.splitlines() if " failed: " in line)
    assert "bogus_kwarg" in failed_line  # the trial's own error, in one line


def test_confirm_seeds_reruns_the_top_configs_and_picks_the_winner_by_the_median(tmp_path):
    logdir = str(tmp_path / "confirm")
    proc = subprocess.run([*TUNE, "--config", CARTPOLE, "--search", "lr={grid: [3.0e-3, 1.0e-5]}", "--num-samples", "1",
                           "--stop-timesteps", "2048", "--num-cpus", "2", "--confirm-seeds", "2", "--confirm-top", "2",
                           "--logdir", logdir], capture_output=True, text=True, timeout=600)
    assert proc.returncode == 1, proc.stderr[-3000:]
    confirm = trials(os.path.join(logdir, "confirm"))
    seeds = sorted((rows(os.path.join(d, "starts.jsonl"))[0]["params"]["lr"],
                    rows(os.path.join(d, "starts.jsonl"))[0]["params"]["seed"]) for d in confirm.values())
    assert seeds == [(1.0e-5, 10_000), (1.0e-5, 10_001), (3.0e-3, 10_000), (3.0e-3, 10_001)]
    with open(os.path.join(logdir, "confirm.csv"), encoding="utf-8") as f:
        table = f.read().splitlines()
    assert len(table) == 3 and ",lr=0.003," in table[1]  # medians of 2 seeds: the higher lr again
    assert validate(os.path.join(logdir, "best.yaml"), lambda algo, env: PPOConfig).config["lr"] == 3.0e-3


def test_optuna_tpe_samples_the_space(tmp_path):
    require_extra("tune", "optuna")
    logdir = str(tmp_path / "optuna")
    proc = subprocess.run([*TUNE, "--config", CARTPOLE, "--search", "lr={loguniform: [1.0e-4, 3.0e-3]}",
                           "--search", "num_epochs={choice: [2, 5]}", "--search-alg", "optuna", "--num-samples", "2",
                           "--stop-timesteps", "1024", "--num-cpus", "2", "--logdir", logdir],
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 1, proc.stderr[-3000:]
    params = [rows(os.path.join(d, "starts.jsonl"))[0]["params"] for d in trials(logdir).values()]
    assert len(params) == 2 and all(1.0e-4 <= p["lr"] <= 3.0e-3 and p["num_epochs"] in (2, 5) for p in params)


@pytest.mark.parametrize("algo", ["sac", "td3"])
def test_an_off_policy_search_trains_each_trial_and_writes_a_tuned_example(tmp_path, algo):
    # SAC and TD3 on Ray Tune as PPO is: each grid point a trial that trains (its critic
    # loss logged), the table ranked, the winner written back as an example that loads.
    example = tmp_path / "pendulum.yaml"
    example.write_text(f"algo: {algo}\nenv: Pendulum-v1\nconfig:\n  learning_starts: 128\n  minibatch_size: 32\n"
                       "  hidden_sizes: [32, 32]\nstop:\n  episode_return_mean: -200\n  env_steps: 512\n"
                       "pass:\n  episode_return_mean: -200\n  env_steps: 512\n")
    logdir = str(tmp_path / "search")
    proc = subprocess.run([*TUNE, "--config", str(example), "--search", "tau={grid: [0.005, 0.05]}",
                           "--num-samples", "1", "--num-cpus", "2", "--logdir", logdir],
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 1, proc.stderr[-2000:]  # 512 steps reach no -200: the run says so
    with open(os.path.join(logdir, "results.csv"), encoding="utf-8") as f:
        table = f.read().splitlines()
    assert len(table) == 3 and ",failed," not in "\n".join(table)
    assert {",tau=0.005," in line or ",tau=0.05," in line for line in table[1:]} == {True}
    for directory in trials(logdir).values():
        progress = rows(os.path.join(directory, "run", "progress.jsonl"))
        assert progress[-1]["env_steps"] >= 512 and progress[-1]["learner/num_grad_steps"] > 0
        assert math.isfinite(progress[-1]["losses/critic_loss"])
    from rlfleet.algorithms import get_config_class

    best = validate(os.path.join(logdir, "best.yaml"), get_config_class)
    assert best.algo == algo and best.config["tau"] in (0.005, 0.05) and best.config["minibatch_size"] == 32


def test_a_search_over_memory_size_and_max_seq_len_trains_each_recurrent_trial(tmp_path):
    example = tmp_path / "cue.yaml"
    example.write_text("algo: ppo\nenv: rlfleet/Cue-v0\nconfig:\n  memory: gru\n  num_envs_per_runner: 4\n"
                       "  rollout_fragment_length: 32\n  minibatch_size: 64\n  hidden_sizes: [16]\n"
                       "stop:\n  episode_return_mean: 0.9\n  env_steps: 512\npass:\n  episode_return_mean: 0.9\n  env_steps: 512\n")
    logdir = str(tmp_path / "search")
    proc = subprocess.run([*TUNE, "--config", str(example), "--search", "memory_size={grid: [8, 16]}",
                           "--search", "max_seq_len={grid: [4, 16]}", "--num-samples", "1", "--num-cpus", "2",
                           "--logdir", logdir], capture_output=True, text=True, timeout=300)
    assert proc.returncode in (0, 1), proc.stderr[-2000:]
    with open(os.path.join(logdir, "results.csv"), encoding="utf-8") as f:
        table = f.read().splitlines()
    assert len(table) == 5 and ",failed," not in "\n".join(table)
    for directory in trials(logdir).values():
        progress = rows(os.path.join(directory, "run", "progress.jsonl"))
        assert progress[-1]["env_steps"] >= 512 and progress[-1]["learner/num_grad_steps"] > 0
    best = validate(os.path.join(logdir, "best.yaml"), lambda algo, env: PPOConfig)
    assert best.config["memory"] == "gru" and best.config["memory_size"] in (8, 16)
    assert best.config["max_seq_len"] in (4, 16)


def test_a_search_can_maximise_an_info_metric(tmp_path):
    # tune.py --metric ranks trials by any progress-row key: here custom/success, the
    # share of Corridor episodes that reach the end (info_metrics {success: last}).
    example = tmp_path / "corridor.yaml"
    example.write_text("algo: ppo\nenv: rlfleet/Corridor-v0\nconfig:\n  env_config: {length: 3, max_steps: 8}\n"
                       "  info_metrics: {success: last}\n  num_envs_per_runner: 4\n  rollout_fragment_length: 16\n"
                       "  minibatch_size: 32\n  metrics_smoothing_episodes: 20\nstop:\n  env_steps: 1024\n"
                       "pass:\n  episode_return_mean: 0.9\n")
    logdir = str(tmp_path / "search")
    proc = subprocess.run([*TUNE, "--config", str(example), "--search", "lr={grid: [1.0e-3, 1.0e-5]}",
                           "--num-samples", "1", "--num-cpus", "2", "--logdir", logdir, "--metric", "custom/success",
                           "--threshold", "2"], capture_output=True, text=True, timeout=300)
    assert proc.returncode == 1, proc.stderr[-2000:]  # a share never reaches 2
    with open(os.path.join(logdir, "results.csv"), encoding="utf-8") as f:
        header, *table = [line.split(",") for line in f.read().splitlines()]
    best = {line[header.index("trial")]: float(line[header.index("best_return")]) for line in table}
    for trial, directory in trials(logdir).items():
        progress = rows(os.path.join(directory, "run", "progress.jsonl"))
        assert best[trial] == pytest.approx(max(r["custom/success"] for r in progress if "custom/success" in r))
    assert [float(line[header.index("best_return")]) for line in table] == sorted(best.values(), reverse=True)


def test_a_search_on_a_terminal_shows_a_bar_over_its_trials(tmp_path):
    from tests.terminal import run_on_a_terminal

    code, out = run_on_a_terminal([*TUNE, "--config", CARTPOLE, "--search", "lr={grid: [3.0e-3, 1.0e-5]}",
                                   "--num-samples", "1", "--stop-timesteps", "1024", "--num-cpus", "2",
                                   "--logdir", str(tmp_path / "search")])
    assert code == 1, out[-2000:]
    assert re.search(r"search: +100%\|.*\| 2/2 \[", out), out[-2000:]
    assert "[search] 2 trials in" in out

"""scripts/train.py as a user runs it (a subprocess), and the Python API as the README shows it.

Runs are kept to a few seconds each: a 4-env CartPole config from a tmp YAML (so no
tuned return target applies), 128 env steps per iteration.
"""

import glob
import json
import math
import os
import re
import subprocess
import sys

import pytest

from rlfleet.algorithms.ppo import PPOConfig
from rlfleet.envs import EnvContractError
from rlfleet.envs.testing import CorridorEnv, OutOfSpaceEnv
from rlfleet.rl.checkpoint import load_checkpoint
from rlfleet.scripts.tools.experiment import load_experiment

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
TRAIN = os.path.join(REPO, "scripts", "train.py")
TIMEOUT_S = 120

TINY_YAML = """\
algo: ppo
env: CartPole-v1
config:
  num_envs_per_runner: 4
  rollout_fragment_length: 32
  minibatch_size: 64
  num_epochs: 4
  seed: 0
"""
STEPS_PER_ITER = 4 * 32

# Runs train.py with a contract-breaking env registered under a name, as a user's own
# launcher script would (envs.register_env, then the CLI).
REGISTERED_ENV_LAUNCHER = """\
import runpy, sys
sys.path.insert(0, {repo!r})
from rlfleet.envs import register_env
from rlfleet.envs.testing import OutOfSpaceEnv
register_env("OutOfSpace-v0", lambda cfg: OutOfSpaceEnv(**cfg))
sys.argv = [{train!r}, *sys.argv[1:]]
runpy.run_path({train!r}, run_name="__main__")
"""


def train(*args, script=TRAIN):
    return subprocess.run([sys.executable, script, *args], cwd=REPO, capture_output=True, text=True, timeout=TIMEOUT_S)


def progress(logdir):
    with open(os.path.join(logdir, "progress.jsonl"), encoding="utf-8") as f:
        return [json.loads(line) for line in f]


def iteration_lines(stdout):
    return [line for line in stdout.splitlines() if line.startswith("iter ")]


@pytest.fixture(scope="module")
def tiny_yaml(tmp_path_factory):
    path = tmp_path_factory.mktemp("config") / "tiny.yaml"
    path.write_text(TINY_YAML)
    return str(path)


# ---------------------------------------------------------------------------------------
# Bad input: exit 2, one line on stderr naming the closest valid choice, no traceback.

_TUNED = load_experiment(os.path.join(REPO, "tuned_examples", "ppo", "CartPole-v1.yaml")).config
TUNED_BATCH = _TUNED["num_envs_per_runner"] * _TUNED["rollout_fragment_length"]

BAD_INPUT = {
    "unknown algo": (["--algo", "ppp", "--env", "CartPole-v1"], ["'ppp'", "'ppo'"]),
    "unknown env": (["--algo", "ppo", "--env", "CartPol-v1"], ["'CartPol-v1'", "'CartPole-v1'"]),
    "unknown key": (["--algo", "ppo", "--env", "CartPole-v1", "--set", "lrr=0.1"], ["'lrr'", "'lr'"]),
    "minibatch too big": (["--algo", "ppo", "--env", "CartPole-v1", "--set", "minibatch_size=100000"],
                          ["minibatch_size 100000", f"train batch {TUNED_BATCH}"]),
    "missing checkpoint": (["--algo", "ppo", "--env", "CartPole-v1", "--restore", "{tmp}/no-such-run/checkpoint"],
                           ["{tmp}/no-such-run/checkpoint"]),
    "env breaks its contract": (["--algo", "ppo", "--env", "OutOfSpace-v0", "--stop-timesteps", "500"],
                                ["'OutOfSpace-v0'", "inf"]),
}


@pytest.mark.parametrize("name", list(BAD_INPUT))
def test_bad_input_exits_2_with_one_line_naming_the_fix(tmp_path, name):
    args, expected = BAD_INPUT[name]
    args = [a.format(tmp=tmp_path) for a in args] + ["--logdir", str(tmp_path / "logs")]
    script = TRAIN
    if name == "env breaks its contract":
        script = str(tmp_path / "launcher.py")
        with open(script, "w", encoding="utf-8") as f:
            f.write(REGISTERED_ENV_LAUNCHER.format(repo=REPO, train=TRAIN))
    run = train(*args, script=script)
    assert run.returncode == 2, run.stderr
    assert "Traceback" not in run.stderr
    lines = run.stderr.strip().splitlines()
    assert len(lines) == 1, f"stderr should be one line, got:\n{run.stderr}"
    assert lines[0].startswith("train.py: error: ")
    for text in expected:
        assert text.format(tmp=tmp_path) in lines[0]


def test_env_contract_error_from_the_python_api():
    algo = PPOConfig(env=OutOfSpaceEnv, num_envs_per_runner=2, rollout_fragment_length=8, minibatch_size=16).build()
    try:
        with pytest.raises(EnvContractError, match=r"'OutOfSpaceEnv'.*inf"):
            algo.train()
    finally:
        algo.stop()


# ---------------------------------------------------------------------------------------
# Runs that train.


class FirstRun:
    """8 iterations with --eval. What it wrote is read at once: the restore test appends."""

    def __init__(self, run, logdir):
        self.run, self.logdir = run, logdir
        self.rows = progress(logdir)
        self.event_files = glob.glob(os.path.join(logdir, "events.out.tfevents.*"))
        self.checkpoint_counters = load_checkpoint(os.path.join(logdir, "checkpoint"))["counters"]


@pytest.fixture(scope="module")
def first_run(tiny_yaml, tmp_path_factory):
    logdir = str(tmp_path_factory.mktemp("run") / "logs")
    run = train("--config", tiny_yaml, "--stop-timesteps", "1024", "--set", "num_epochs=2", "--logdir", logdir, "--eval")
    assert run.returncode == 0, run.stdout + run.stderr
    return FirstRun(run, logdir)


def test_console_shows_one_line_per_iteration_and_a_summary(first_run):
    run, logdir = first_run.run, first_run.logdir
    lines = iteration_lines(run.stdout)
    assert [int(line.split("|")[0].split()[1]) for line in lines] == list(range(1, 9))
    assert [int(line.split("|")[1].split()[1]) for line in lines] == [STEPS_PER_ITER * i for i in range(1, 9)]
    done = run.stdout.strip().splitlines()[-1]
    assert done.startswith("done: 8 iterations, 1024 env steps, ")
    assert done.endswith(f"; checkpoint {os.path.join(logdir, 'checkpoint')}")
    assert "Traceback" not in run.stderr


def test_progress_file_has_one_json_line_per_iteration(first_run):
    rows = first_run.rows
    assert [r["iteration"] for r in rows] == list(range(1, 9))
    assert [r["env_steps"] for r in rows] == [STEPS_PER_ITER * i for i in range(1, 9)]
    times = [r["time_s"] for r in rows]
    assert all(t >= 0 for t in times) and times == sorted(times)
    for r in rows:
        ret = r["episode_return_mean"]
        assert ret is None or (isinstance(ret, float) and 8 <= ret <= 500)  # CartPole returns
    assert rows[-1]["episode_return_mean"] is not None
    # --set num_epochs=2 took effect: 2 epochs x (128 rows / minibatch 64) gradient steps.
    assert {r["learner/num_grad_steps"] for r in rows} == {4}
    # the first row breaks the start-up down, phase by phase (scripts/bench.py startup reads it)
    startup = {k: v for k, v in rows[0].items() if k.startswith("startup/")}
    assert list(startup) == ["startup/imports_and_config_s", "startup/algorithm_imports_s", "startup/env_probe_s",
                             "startup/runtime_s", "startup/learners_s", "startup/runners_s", "startup/first_iteration_s"]
    assert all(v >= 0 for v in startup.values()) and startup["startup/algorithm_imports_s"] > 0.1  # torch at least
    assert not any(k.startswith("startup/") for r in rows[1:] for k in r)


def test_tensorboard_events_hold_the_progress_scalars(first_run):
    from tensorboard.backend.event_processing.event_file_loader import EventFileLoader

    files, rows = first_run.event_files, first_run.rows
    assert len(files) == 1
    points = {}
    for event in EventFileLoader(files[0]).Load():
        for value in event.summary.value:
            if value.tag == "env_steps":
                points[event.step] = value.tensor.float_val[0]
    assert sorted(points) == [r["env_steps"] for r in rows]
    assert all(points[step] == step for step in points)


def test_eval_prints_an_evaluation_line(first_run):
    evals = [line for line in first_run.run.stdout.splitlines() if line.startswith("evaluation:")]
    assert len(evals) == 1
    m = re.fullmatch(r"evaluation: return (\d+\.\d\d) over 10 episodes", evals[0])
    assert m and 8 <= float(m.group(1)) <= 500, evals[0]


def test_checkpoint_is_written_at_the_end(first_run):
    counters = first_run.checkpoint_counters
    assert (counters["iteration"], counters["env_steps"]) == (8, 1024)


def test_restore_continues_counters_and_appends_progress(first_run, tiny_yaml):
    logdir, before = first_run.logdir, first_run.rows
    checkpoint = os.path.join(logdir, "checkpoint")
    # No --logdir: the run goes on in the logdir the checkpoint came from.
    run = train("--config", tiny_yaml, "--restore", checkpoint, "--stop-timesteps", "1536", "--set", "num_epochs=2")
    assert run.returncode == 0, run.stdout + run.stderr
    assert f"restored {checkpoint} at iteration 8, env step 1024" in run.stdout
    assert [int(line.split("|")[0].split()[1]) for line in iteration_lines(run.stdout)] == [9, 10, 11, 12]
    rows = progress(logdir)
    assert rows[: len(before)] == before
    assert [r["iteration"] for r in rows] == list(range(1, 13))
    assert [r["env_steps"] for r in rows] == [STEPS_PER_ITER * i for i in range(1, 13)]
    times = [r["time_s"] for r in rows]
    assert times == sorted(times), "time_s must go on from the checkpoint's"
    counters = load_checkpoint(checkpoint)["counters"]
    assert (counters["iteration"], counters["env_steps"]) == (12, 1536)


def test_unreached_return_target_exits_1(tiny_yaml, tmp_path):
    run = train("--config", tiny_yaml, "--stop-reward", "10000", "--stop-timesteps", "1000",
                "--logdir", str(tmp_path / "logs"), "--quiet")
    assert run.returncode == 1, run.stdout + run.stderr
    assert iteration_lines(run.stdout) == []  # --quiet
    done = run.stdout.strip().splitlines()[-1]
    assert done.startswith("done: 8 iterations, 1024 env steps, ")
    assert "target 10000.0 NOT reached" in done
    assert len(progress(str(tmp_path / "logs"))) == 8


# ---------------------------------------------------------------------------------------
# The Python API, as the README shows it.


def test_readme_python_api(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    algo = PPOConfig(env="CartPole-v1", seed=0).build()
    for _ in range(3):
        result = algo.train()  # flat dict, the same keys as a progress.jsonl line
    algo.save("ckpt/"); algo.stop()  # noqa: E702 (as in the README)

    assert result["iteration"] == 3 and result["env_steps"] == 3 * 8 * 128  # the discrete family: 8 envs x 128 steps
    assert all(isinstance(v, (int, float)) for v in result.values()), result
    state = load_checkpoint("ckpt/")
    assert os.path.isfile(tmp_path / "ckpt" / "model.safetensors")
    assert (state["counters"]["iteration"], state["counters"]["env_steps"]) == (3, 3072)


def test_train_result_is_the_progress_line(tmp_path):
    algo = PPOConfig(env="CartPole-v1", seed=0, num_envs_per_runner=4, minibatch_size=64, num_epochs=1,
                     logdir=str(tmp_path)).build()
    results = [algo.train() for _ in range(2)]
    algo.stop()
    rows = progress(str(tmp_path))
    assert len(rows) == 2
    for result, row in zip(results, rows):
        assert row == {k: None if isinstance(v, float) and math.isnan(v) else v for k, v in result.items()}


def corridor_creator_recording(seen):
    def creator(env_config):
        seen.append(dict(env_config))
        return CorridorEnv(**env_config)

    return creator


@pytest.mark.parametrize("kind", ["Env subclass", "callable creator", "gymnasium id"])
def test_env_accepts_a_class_a_creator_and_an_id_with_env_config(kind):
    # Every episode is truncated at exactly 4 steps, which only env_config can have set: the
    # corridor's goal (50 cells) is out of reach in 4 steps (return 4 * -0.01), and no
    # CartPole episode ends by itself that soon (return 4).
    seen = []
    env, env_config = {
        "Env subclass": (CorridorEnv, {"length": 50, "max_steps": 4}),
        "callable creator": (corridor_creator_recording(seen), {"length": 50, "max_steps": 4}),
        "gymnasium id": ("CartPole-v1", {"max_episode_steps": 4}),
    }[kind]
    algo = PPOConfig(env=env, env_config=env_config, seed=0, num_envs_per_runner=2, rollout_fragment_length=8,
                     minibatch_size=16, num_epochs=1).build()
    try:
        result = algo.train()
    finally:
        algo.stop()
    assert result["episode_len_mean"] == 4
    assert result["episodes_total"] == 4  # 2 envs x 8 steps
    assert result["episode_return_mean"] == pytest.approx(4.0 if kind == "gymnasium id" else -0.04)
    if kind == "callable creator":
        assert seen and all(cfg == env_config for cfg in seen)


def test_the_algorithm_list_comes_from_the_registry():
    from rlfleet.algorithms import ALGORITHMS

    proc = train("--list-algorithms")
    assert proc.returncode == 0, proc.stderr
    names = [line.split()[0] for line in proc.stdout.splitlines()]
    assert names == list(ALGORITHMS)
    assert any(line.startswith("dqn ") and "[Discrete]" in line for line in proc.stdout.splitlines())
    help_text = " ".join(train("--help").stdout.split())
    assert f"algorithm: {', '.join(ALGORITHMS)}" in help_text


def test_print_config_shows_every_key_with_its_source_and_exits(tmp_path):
    from rlfleet.algorithms.ppo import PPOConfig

    proc = subprocess.run([sys.executable, TRAIN, "--algo", "ppo", "--env", "CartPole-v1", "--set", "gamma=0.95",
                           "--seed", "3", "--print-config"], cwd=tmp_path, capture_output=True, text=True,
                          timeout=TIMEOUT_S)
    assert proc.returncode == 0, proc.stderr
    rows = {line.split()[0]: line for line in proc.stdout.splitlines() if not line.startswith("--set")}
    assert list(rows) == PPOConfig.field_names()
    example = os.path.join("tuned_examples", "ppo", "CartPole-v1.yaml")
    assert rows["gamma"].split()[1] == "0.95" and rows["gamma"].endswith("--set")
    assert rows["seed"].split()[1] == "3" and rows["seed"].endswith("command line")
    assert rows["gae_lambda"].endswith(example)  # the tuned example's own value
    assert rows["normalize_obs"].endswith("defaults for discrete")  # left to the spaces
    assert rows["vf_coef"].endswith(" default")
    assert not os.path.exists(tmp_path / "runs")  # nothing was trained or written


def test_restoring_a_kept_copy_forks_a_new_run_and_leaves_its_run_as_it_was(tiny_yaml, tmp_path):
    logdir = str(tmp_path / "run")
    first = train("--config", tiny_yaml, "--logdir", logdir, "--quiet", "--checkpoint-every", "2",
                  "--stop-timesteps", "1024", "--set", "keep_checkpoints=2")
    assert first.returncode == 0, first.stderr
    assert sorted(os.listdir(os.path.join(logdir, "checkpoints"))) == ["iteration-6", "iteration-8"]
    before = {name: open(os.path.join(logdir, name), "rb").read() for name in ("progress.jsonl", "progress.csv")}
    latest = open(os.path.join(logdir, "checkpoint", "model.safetensors"), "rb").read()
    kept = os.path.join(logdir, "checkpoints", "iteration-6")
    run = subprocess.run([sys.executable, TRAIN, "--config", tiny_yaml, "--restore", kept, "--stop-timesteps", "1024",
                          "--quiet"], cwd=tmp_path, capture_output=True, text=True, timeout=TIMEOUT_S)
    assert run.returncode == 0, run.stdout + run.stderr
    assert f"restored {kept} at iteration 6" in run.stdout
    [fork] = os.listdir(tmp_path / "runs")  # the default new run directory, under the working directory
    assert [r["iteration"] for r in progress(tmp_path / "runs" / fork)] == [7, 8]
    assert {name: open(os.path.join(logdir, name), "rb").read() for name in before} == before
    assert open(os.path.join(logdir, "checkpoint", "model.safetensors"), "rb").read() == latest

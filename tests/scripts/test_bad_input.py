"""Careless and hostile input to train.py: one line and exit 2 naming the culprit, nothing
written before it changed; internal errors keep their traceback; runs never overwrite or
duplicate each other's records."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import textwrap

import pytest

from tests.cli_checks import one_line_error as check_one_line

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
TRAIN = os.path.join(REPO, "scripts", "train.py")
TINY = ["--algo", "ppo", "--env", "CartPole-v1", "--set", "num_envs_per_runner=2", "--set", "rollout_fragment_length=16",
        "--set", "minibatch_size=32", "--set", "num_epochs=1"]


def train(*args, script=TRAIN):
    return subprocess.run([sys.executable, script, *args], cwd=REPO, capture_output=True, text=True, timeout=300)


def finished(run):
    """The run ended normally: 0, or 1 for the tuned example's return target not reached."""
    assert run.returncode in (0, 1) and "done:" in run.stdout, run.stdout + run.stderr


def one_line_error(run, *needles):
    return check_one_line(run, "train.py", *needles)


def snapshot(folder):
    """Every file below ``folder`` with its bytes."""
    out = {}
    for root, _, files in os.walk(folder):
        for name in files:
            path = os.path.join(root, name)
            with open(path, "rb") as f:
                out[os.path.relpath(path, folder)] = f.read()
    return out


BAD_VALUES = {
    "nan lr": (["--set", "lr=.nan"], ["'lr'", "finite"]),
    "inf clip": (["--set", "grad_clip=.inf"], ["'grad_clip'", "finite"]),
    "list for a number": (["--set", "lr=[1, 2]"], ["'lr'", "expected a number"]),
    "negative seed": (["--seed", "-1"], ["seed must be >= 0, got -1"]),
    "env_config not a mapping": (["--set", "env_config=3"], ["'env_config'", "mapping"]),
    "env_config key the env does not take": (["--set", "env_config={bogus: 1}"], ["'CartPole-v1'", "'bogus'"]),
    "zero stop steps": (["--stop-timesteps", "0"], ["env_steps must be > 0, got 0"]),
    "negative stop seconds": (["--stop-seconds", "-5"], ["time_s must be > 0, got -5"]),
    "negative checkpoint interval": (["--checkpoint-every", "-1"], ["--checkpoint-every must be >= 0"]),
    "set key names --set": (["--set", "lrr=0.1"], ["--set: unknown key 'lrr'", "'lr'"]),
    "set not key=value": (["--set", "lr"], ["--set expects KEY=VALUE"]),
    "address with nothing remote": (["--address", "127.0.0.1:9"], ["address '127.0.0.1:9' given", "num_env_runners"]),
    "address nothing answers": (["--address", "127.0.0.1:9", "--num-env-runners", "1"],
                                ["--address '127.0.0.1:9': nothing answers there"]),
}


@pytest.mark.parametrize("name", list(BAD_VALUES))
def test_bad_values_exit_2_with_one_line_and_write_nothing(tmp_path, name):
    args, needles = BAD_VALUES[name]
    logdir = tmp_path / "logs"
    one_line_error(train(*TINY, *args, "--logdir", str(logdir)), *needles)
    assert not logdir.exists() or not os.listdir(logdir), "a refused run wrote files"


EXAMPLE = """\
algo: ppo
env: CartPole-v1
config: {config}
stop: {stop}
"""


@pytest.mark.parametrize("config,stop,needles", [
    ("[lr, 0.1]", "{env_steps: 100}", ["'config' must be a mapping"]),
    ("{lr: 0.001}", "{env_steps: many}", ["stop: env_steps must be a finite number, got 'many'"]),
    ("{lr: 0.001}", "[1, 2]", ["stop: expected a mapping"]),
    ("{lr: .nan}", "{env_steps: 100}", ["'lr'", "finite"]),
])
def test_tuned_examples_of_the_wrong_shape_are_refused_naming_the_file(tmp_path, config, stop, needles):
    path = tmp_path / "example.yaml"
    path.write_text(EXAMPLE.format(config=config, stop=stop))
    line = one_line_error(train("--config", str(path), "--logdir", str(tmp_path / "logs")), *needles)
    assert str(path) in line


def test_a_set_key_error_names_set_not_the_yaml_file(tmp_path):
    path = tmp_path / "example.yaml"
    path.write_text(EXAMPLE.format(config="{lr: 0.001}", stop="{env_steps: 100}"))
    line = one_line_error(train("--config", str(path), "--set", "lrr=1", "--logdir", str(tmp_path / "l")), "--set")
    assert str(path) not in line


def test_a_logdir_that_is_a_file_or_lies_under_one_is_refused(tmp_path):
    blocker = tmp_path / "file"
    blocker.write_text("keep me")
    one_line_error(train(*TINY, "--logdir", str(blocker)), str(blocker), "is a file")
    one_line_error(train(*TINY, "--logdir", str(blocker / "run")), "cannot create it")
    assert blocker.read_text() == "keep me"


@pytest.fixture(scope="module")
def finished_run(tmp_path_factory):
    logdir = str(tmp_path_factory.mktemp("run") / "logs")
    finished(train(*TINY, "--stop-timesteps", "128", "--quiet", "--logdir", logdir))
    return logdir


def test_a_logdir_holding_a_run_is_refused_without_restore_and_left_untouched(finished_run):
    before = snapshot(finished_run)
    one_line_error(train(*TINY, "--stop-timesteps", "64", "--logdir", finished_run), "already holds a run", "--restore")
    assert snapshot(finished_run) == before


def rows(logdir):
    with open(os.path.join(logdir, "progress.jsonl"), encoding="utf-8") as f:
        return [json.loads(line) for line in f]


def test_a_copied_checkpoint_continues_beside_itself_and_each_iteration_is_logged_once(finished_run, tmp_path):
    original = snapshot(finished_run)
    copy = tmp_path / "copied"
    shutil.copytree(finished_run, copy)
    # As if the run had been killed after logging iteration 9 but before checkpointing it.
    last = rows(copy)[-1]
    with open(copy / "progress.jsonl", "a", encoding="utf-8") as f:
        f.write(json.dumps({**last, "iteration": last["iteration"] + 1, "env_steps": -1}) + "\n")
    finished(train(*TINY, "--stop-timesteps", "256", "--quiet", "--restore", str(copy / "checkpoint")))
    assert snapshot(finished_run) == original, "the restored run wrote into the directory it was copied from"
    iterations = [r["iteration"] for r in rows(copy)]
    assert iterations == list(range(1, len(iterations) + 1)) and len(iterations) > last["iteration"]
    assert all(r["env_steps"] > 0 for r in rows(copy))
    after = rows(copy)
    assert after[-1]["env_runners/0/env_steps"] == after[-1]["env_steps"]  # per-runner counters continue


LAUNCHER = textwrap.dedent("""\
    import errno, sys
    import torch
    from rlfleet.algorithms.ppo.learner import PPOLearner
    from rlfleet.scripts.train import main

    mode = sys.argv.pop(1)
    if mode == "bug":
        def broken(self, batch):
            raise RuntimeError("injected bug in the loss")
        PPOLearner.compute_loss = broken
    if mode == "full-disk":
        real, calls = torch.save, []  # what rl/checkpoint.py calls
        def save(*args, **kwargs):
            calls.append(1)
            if len(calls) > 1:
                raise OSError(errno.ENOSPC, "No space left on device")
            return real(*args, **kwargs)
        torch.save = save
    sys.exit(main())
""")


def test_a_bug_in_a_loss_is_not_reported_as_bad_input(tmp_path):
    script = tmp_path / "launcher.py"
    script.write_text(LAUNCHER)
    run = subprocess.run([sys.executable, str(script), "bug", *TINY, "--logdir", str(tmp_path / "logs")],
                         capture_output=True, text=True, timeout=300)
    assert run.returncode == 1, run.stderr
    assert "Traceback" in run.stderr and "injected bug in the loss" in run.stderr
    assert "train.py: error" not in run.stderr


def test_a_full_disk_while_checkpointing_keeps_the_previous_checkpoint_and_exits_3(tmp_path):
    script = tmp_path / "launcher.py"
    script.write_text(LAUNCHER)
    logdir = tmp_path / "logs"
    run = subprocess.run([sys.executable, str(script), "full-disk", *TINY, "--stop-timesteps", "256",
                          "--checkpoint-every", "1", "--quiet", "--logdir", str(logdir)],
                         capture_output=True, text=True, timeout=300)
    assert run.returncode == 3, run.stdout + run.stderr
    lines = run.stderr.strip().splitlines()
    assert len(lines) == 1 and "No space left on device" in lines[0], run.stderr
    from rlfleet.rl.checkpoint import load_checkpoint

    assert load_checkpoint(str(logdir / "checkpoint"))["counters"]["iteration"] == 1  # the first save, intact


def test_help_is_fast_and_lists_algorithms_exit_codes_and_logs():
    code = "import sys; sys.argv = ['train.py', '--help']\nimport runpy\ntry:\n    runpy.run_path(%r, run_name='__main__')\n" \
           "except SystemExit:\n    pass\nprint('torch' in sys.modules)" % TRAIN
    run = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    from rlfleet.algorithms import ALGORITHMS

    assert run.stdout.strip().endswith("False"), "--help imported torch"
    words = " ".join(run.stdout.split())  # argparse wraps lines
    for text in (", ".join(ALGORITHMS), "lm-ppo", "exit codes", "progress.jsonl", "130"):
        assert text in words


# ---------------------------------------------------------------------------------------
# The same boundaries from Python.


def test_an_env_config_key_the_env_does_not_take_is_named_from_python():
    from rlfleet.algorithms.ppo import PPOConfig
    from rlfleet.envs import EnvConfigError

    with pytest.raises(EnvConfigError, match=r"env 'CartPole-v1' does not take env_config key 'bogus'"):
        PPOConfig(env="CartPole-v1", env_config={"bogus": 1}).build()


def test_a_missing_prompt_file_is_one_line():
    from rlfleet.algorithms.grpo import GRPOConfig
    from rlfleet.rl.config import ConfigError

    with pytest.raises(ConfigError) as info:
        GRPOConfig(env="text-jsonl", env_config={"path": "/no/such/prompts.jsonl", "reward": "m:f"}).build()
    assert str(info.value) == "env 'text-jsonl': cannot read '/no/such/prompts.jsonl': No such file or directory"


def test_a_reward_that_returns_a_string_is_an_error_not_a_number():
    import numpy as np

    from rlfleet.envs.text import Prompt, RewardError, score

    with pytest.raises(RewardError, match=r"returned '1', not a number"):
        score(lambda prompt, completion: "1", [Prompt("1+0=", "1")], ["1"])
    assert score(lambda prompt, completion: np.float32(1.0), [Prompt("1+0=", "1")], ["1"]).tolist() == [1.0]


def test_complete_takes_one_prompt_as_a_string(tmp_path):
    from rlfleet.algorithms.grpo import GRPO, GRPOConfig

    algo = GRPOConfig(env="text-addition", seed=0, warmup_steps=0, n_layer=1, n_head=2, n_embd=16,
                      prompts_per_runner=2, group_size=2, minibatch_size=4).build()
    try:
        one = algo.complete("12+7=")
        many = algo.complete(["12+7=", "3+4="])
        algo.save(str(tmp_path / "ckpt"))
    finally:
        algo.stop()
    assert isinstance(one, str) and one == many[0] and len(many) == 2
    restored = GRPO.from_checkpoint(str(tmp_path / "ckpt"))  # the way the README shows
    try:
        assert restored.complete("12+7=") == one
    finally:
        restored.stop()


def test_a_grpo_checkpoint_restored_as_lm_ppo_is_refused_before_any_warm_up_or_write(tmp_path):
    """Issue 30: refused only after a ~10 s warm-up that wrote warmup.pt into the GRPO run."""
    logdir = tmp_path / "grpo"
    lm = ["--env", "text-addition", "--stop-timesteps", "16", "--quiet", "--set", "warmup_steps=20",
          "--set", "n_layer=1", "--set", "n_head=2", "--set", "n_embd=16", "--set", "prompts_per_runner=2",
          "--set", "group_size=2", "--set", "minibatch_size=4"]
    finished(train("--algo", "grpo", *lm, "--logdir", str(logdir)))
    before = snapshot(logdir)
    run = train("--algo", "ppo", *lm, "--restore", str(logdir / "checkpoint"))
    one_line_error(run, f"--restore '{logdir / 'checkpoint'}' holds a grpo run, not lm-ppo", "--algo grpo")
    assert "warm-up" not in run.stdout and snapshot(logdir) == before


def test_ctrl_c_pressed_several_times_still_ends_with_the_summary_and_exit_130(tmp_path):
    import signal
    import time

    logdir = tmp_path / "logs"
    proc = subprocess.Popen([sys.executable, TRAIN, *TINY, "--stop-timesteps", "10000000", "--logdir", str(logdir)],
                            cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        for line in proc.stdout:  # wait until it trains
            if line.startswith("iter "):
                break
        for _ in range(4):  # an impatient user
            proc.send_signal(signal.SIGINT)
            time.sleep(0.05)
        out, err = proc.communicate(timeout=120)
    finally:
        proc.kill()
    assert proc.returncode == 130, err
    assert "Traceback" not in err
    assert "done:" in out
    from rlfleet.rl.checkpoint import load_checkpoint

    counters = load_checkpoint(str(logdir / "checkpoint"))["counters"]
    assert counters["iteration"] == rows(str(logdir))[-1]["iteration"]  # the checkpoint holds the last logged row


USER_SIM = textwrap.dedent("""\
    import gymnasium as gym
    import numpy as np
    from rlfleet.envs import register_env


    class MySim(gym.Env):
        observation_space = gym.spaces.Box(-1.0, 1.0, (2,), np.float32)
        action_space = gym.spaces.Discrete(2)

        def reset(self, *, seed=None, options=None):
            self.t = 0
            return np.zeros(2, np.float32), {}

        def step(self, action):
            self.t += 1
            return np.zeros(2, np.float32), float(action), False, self.t >= 20, {}


    register_env("MySim-v0", lambda cfg: MySim())
""")


def test_an_env_registered_in_the_users_module_trains_on_ray_runners_from_another_directory(tmp_path):
    (tmp_path / "code").mkdir()
    (tmp_path / "elsewhere").mkdir()
    module = tmp_path / "code" / "usersim_for_test.py"
    module.write_text(USER_SIM)
    args = ["--algo", "ppo", "--env", "MySim-v0", "--num-env-runners", "2", "--stop-timesteps", "1024", "--quiet",
            "--set", "num_envs_per_runner=2", "--set", "rollout_fragment_length=16", "--set", "minibatch_size=32",
            "--logdir", str(tmp_path / "logs")]
    run = subprocess.run([sys.executable, TRAIN, "--import", str(module), *args], cwd=tmp_path / "elsewhere",
                         capture_output=True, text=True, timeout=300)
    assert run.returncode == 0, run.stdout + run.stderr[-3000:]
    assert rows(str(tmp_path / "logs"))[-1]["env_steps"] >= 1024
    missing = subprocess.run([sys.executable, TRAIN, "--import", "no_such_user_module", *args],
                             cwd=tmp_path / "elsewhere", capture_output=True, text=True, timeout=300)
    one_line_error(missing, "--import 'no_such_user_module'")


def test_set_lr_on_an_example_with_an_lr_schedule_scales_the_schedule(tmp_path):
    # The PPO CartPole example anneals lr with lr_schedule [[0, 2e-3], [100000, 0]], which
    # would silently win over lr: the one rule (rl/config.py lr_over_schedule) scales it.
    logdir = tmp_path / "logs"
    run = train(*TINY, "--set", "lr=0.00123", "--stop-timesteps", "64", "--quiet", "--logdir", str(logdir))
    finished(run)
    assert "--set lr=0.00123 scales the example's lr_schedule to [[0, 0.00123], [100000, 0.0]]" in run.stdout
    got = rows(str(logdir))
    assert len(got) == 2 and all(r["learner/lr"] == pytest.approx(0.00123 * (1 - r["env_steps"] / 100_000)) for r in got)


def test_set_lr_over_a_warm_up_schedule_is_refused(tmp_path):
    example = tmp_path / "warm.yaml"
    example.write_text("algo: ppo\nenv: CartPole-v1\nconfig:\n  lr_schedule: [[0, 0.0], [1000, 1.0e-3]]\n")
    run = train("--config", str(example), "--set", "lr=0.002", "--quiet", "--logdir", str(tmp_path / "logs"))
    one_line_error(run, "--set: lr=0.002: the lr_schedule starts at 0")
    assert not (tmp_path / "logs").exists()


def test_an_env_registered_by_a_launcher_from_its_own_module_trains_on_ray_runners(tmp_path):
    """Issue 30: a launcher script registers a creator from a module of its project (put on
    sys.path by the launcher) and is run from another directory; the Ray runners could not
    import that module and the run failed with exit 3. It is shipped to them now, without
    --import."""
    for folder in ("code", "sims", "elsewhere"):
        (tmp_path / folder).mkdir()
    (tmp_path / "sims" / "beside_sim_for_test.py").write_text(USER_SIM.replace(
        'register_env("MySim-v0", lambda cfg: MySim())', "def make(cfg):\n    return MySim()\n"))
    (tmp_path / "code" / "launcher.py").write_text(textwrap.dedent("""\
        import os
        import sys

        sys.path.append(os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "sims"))
        import beside_sim_for_test
        from rlfleet.envs import register_env
        from rlfleet.scripts.train import main

        register_env("corridor", beside_sim_for_test.make)
        sys.exit(main(sys.argv[1:]))
    """))
    run = subprocess.run(
        [sys.executable, str(tmp_path / "code" / "launcher.py"), "--algo", "ppo", "--env", "corridor",
         "--num-env-runners", "2", "--stop-timesteps", "256", "--quiet", "--set", "num_envs_per_runner=2",
         "--set", "rollout_fragment_length=16", "--set", "minibatch_size=32", "--set", "restart_timeout_s=10",
         "--logdir", str(tmp_path / "logs")],
        cwd=tmp_path / "elsewhere", capture_output=True, text=True, timeout=300)
    assert run.returncode == 0, run.stdout + run.stderr[-3000:]
    assert rows(str(tmp_path / "logs"))[-1]["env_steps"] >= 256


def test_the_modules_shipped_for_an_env_are_the_users_own(tmp_path, monkeypatch):
    import functools
    import importlib

    from gymnasium.envs.classic_control import CartPoleEnv

    from rlfleet.envs import registry, user_code_modules
    from rlfleet.envs.testing import CorridorEnv

    (tmp_path / "own_sim_for_test.py").write_text("def make(cfg):\n    raise NotImplementedError\n\nclass Sim:\n    pass\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    own = importlib.import_module("own_sim_for_test")
    monkeypatch.setitem(registry._REGISTRY, "own-sim-for-test", functools.partial(own.make))
    assert user_code_modules("own-sim-for-test") == [own]
    assert user_code_modules(own.Sim) == [own]
    assert user_code_modules(CartPoleEnv) == user_code_modules("CartPole-v1") == []  # installed; a gymnasium id
    assert user_code_modules("rlfleet/Corridor-v0") == user_code_modules(CorridorEnv) == []  # ours
    main = type("Sim", (), {"__module__": "__main__"})
    assert user_code_modules(main) == []  # pickled by value


def test_a_pettingzoo_module_that_does_not_exist_is_one_line(tmp_path):
    run = train("--algo", "ppo", "--env", "pettingzoo:no_such_game_v1", "--logdir", str(tmp_path / "logs"))
    one_line_error(run, "cannot import 'no_such_game_v1'", "rlfleet[pettingzoo]")
    assert not (tmp_path / "logs").exists()

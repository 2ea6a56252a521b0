"""train.py shows a live bar with an ETA on a terminal and the plain line in a pipe."""

from __future__ import annotations

import re
import subprocess
import sys

from tests.terminal import run_on_a_terminal

COMMAND = [sys.executable, "-m", "rlfleet.scripts.train", "--algo", "ppo", "--env", "CartPole-v1", "--defaults",
           "--stop-timesteps", "3000"]


# tqdm's bar: "ppo CartPole-v1:  34%|###   | 1.02k/3.00k [00:00<00:01, 2.2k steps/s, return=..."
BAR = re.compile(r"ppo CartPole-v1: +\d+%\|.*\| [\d.]+k?/3\.00k \[\d\d:\d\d<\d\d:\d\d, [\d.]+k? steps/s, return=")


def test_a_terminal_gets_a_live_bar_with_its_eta(tmp_path):
    code, out = run_on_a_terminal([*COMMAND, "--logdir", str(tmp_path / "run")])
    assert code == 0, out
    assert BAR.search(out), out[-2000:]
    assert "100%|" in out
    assert "iter     1 |" not in out  # the bar replaces the per-iteration lines
    assert re.search(r"done: \d+ iterations, \d+ env steps", out)


def test_a_terminal_without_a_size_still_gets_the_bar(tmp_path):
    # (a pseudo-terminal of 0 x 0, as `script` and some CI runners give: tqdm alone draws nothing there)
    code, out = run_on_a_terminal([*COMMAND, "--logdir", str(tmp_path / "run")], columns=0)
    assert code == 0 and BAR.search(out), out[-2000:]


def test_a_pipe_gets_the_plain_line_per_iteration(tmp_path):
    proc = subprocess.run([*COMMAND, "--logdir", str(tmp_path / "run")], capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr
    assert re.search(r"^iter +1 \| env_steps +\d+ \| return", proc.stdout, re.M)
    assert "steps/s, return=" not in proc.stdout + proc.stderr and "%|" not in proc.stdout + proc.stderr


def test_regression_seeds_get_a_bar_on_a_terminal(tmp_path):
    example = tmp_path / "short.yaml"
    example.write_text("algo: ppo\nenv: CartPole-v1\nconfig:\n  num_envs_per_runner: 4\n  rollout_fragment_length: 64\n"
                       "stop:\n  env_steps: 512\npass:\n  episode_return_mean: 1000\n  env_steps: 512\n")
    code, out = run_on_a_terminal([sys.executable, "-m", "rlfleet.scripts.run_regression", str(example), "--seeds", "2"])
    assert code == 1, out[-2000:]  # 1000 is out of CartPole's reach: both seeds fail, as the table says
    assert re.search(r"regression: +100%\|.*\| 2/2 \[\d\d:\d\d<00:00", out), out[-2000:]
    assert re.search(r"short\.yaml seed 1: NOT reached", out)

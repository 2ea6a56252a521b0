import json
import os
import subprocess
import sys

import pytest

from rlfleet.scripts.tools.regression import compare

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

CORRIDOR = """
algo: ppo
env: rlfleet/Corridor-v0
tags: [quick]
# Ten cells within 40 steps: a random walk almost never arrives, a learned policy always does.
config: {env_config: {length: 10, max_steps: 40}, num_envs_per_runner: 4, rollout_fragment_length: 32, minibatch_size: 64, lr: 0.003}
stop: {env_steps: 20000}
pass: {episode_return_mean: 0.8, env_steps: 20000, time_s: 120}
"""


def run(*args, cwd=ROOT):
    return subprocess.run([sys.executable, "scripts/run_regression.py", *args], cwd=cwd, capture_output=True, text=True,
                          timeout=300)


@pytest.fixture
def corridor(tmp_path):
    path = tmp_path / "corridor.yaml"
    path.write_text(CORRIDOR)
    return path


def test_a_learning_example_passes_and_writes_results(corridor, tmp_path):
    out = tmp_path / "results.json"
    proc = run(str(corridor), "--seeds", "1", "--out", str(out))
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "PASS" in proc.stdout and "1 passed, 0 failed, 0 regressions" in proc.stdout
    data = json.loads(out.read_text())
    assert data["machine"]["cpu_count"] == os.cpu_count() and data["machine"]["date"]
    (summary,) = data["examples"].values()
    assert summary["passed"] and summary["median_env_steps_to_threshold"] <= 20000


def test_a_broken_config_fails_with_exit_1(corridor):
    proc = run(str(corridor), "--seeds", "1", "--set", "lr=0")
    assert proc.returncode == 1
    assert "FAIL" in proc.stdout and "0 passed, 1 failed" in proc.stdout


def test_a_slowed_example_is_a_regression_against_the_baseline(corridor, tmp_path):
    out = tmp_path / "baseline.json"
    assert run(str(corridor), "--seeds", "1", "--out", str(out)).returncode == 0
    data = json.loads(out.read_text())
    (key,) = data["examples"]
    # A baseline that needed a tenth of the steps: today's run is "slower" by far more than 50%.
    data["examples"][key]["median_env_steps_to_threshold"] /= 10
    out.write_text(json.dumps(data))
    proc = run(str(corridor), "--seeds", "1", "--baseline", str(out))
    assert proc.returncode == 1
    assert "REGRESSION" in proc.stdout and "env steps to threshold" in proc.stdout


def test_compare_flags_pass_to_fail_and_env_steps_beyond_tolerance_and_only_notes_seconds():
    base = {"a": {"passed": True, "median_seconds_to_threshold": 10.0, "median_env_steps_to_threshold": 1000},
            "b": {"passed": True, "median_seconds_to_threshold": 10.0, "median_env_steps_to_threshold": 1000},
            "c": {"passed": True, "median_seconds_to_threshold": 10.0, "median_env_steps_to_threshold": 1000}}
    cur = {"a": {"passed": False, "median_seconds_to_threshold": None, "median_env_steps_to_threshold": None},
           "b": {"passed": True, "median_seconds_to_threshold": 30.0, "median_env_steps_to_threshold": 1490},
           "c": {"passed": True, "median_seconds_to_threshold": 10.0, "median_env_steps_to_threshold": 1510}}
    problems, notes = compare(cur, base, tolerance=0.5)
    assert problems == ["a: passed in the baseline, fails now",
                        "c: env steps to threshold 1510 vs baseline 1000 (+51%, tolerance 50%)"]
    # Three times slower in wall seconds (a loaded machine) is a note, not a regression.
    assert notes[0].startswith("b: seconds to threshold 30 vs baseline 10 (3.00x; not judged")


@pytest.mark.parametrize("text,needle", [
    (CORRIDOR.replace("tags:", "tagz:"), "unknown key 'tagz'; did you mean 'tags'?"),
    (CORRIDOR.replace("lr: 0.003", "lrr: 0.003"), "unknown key 'lrr' for ppo; did you mean 'lr'?"),
    (CORRIDOR.replace("pass: {episode_return_mean: 0.8, ", "pass: {"), "missing pass criterion 'pass: episode_return_mean'"),
    (CORRIDOR.replace("algo: ppo", "algo: ppq"), "unknown algorithm 'ppq'; did you mean 'ppo'?"),
    (CORRIDOR.replace("pass: {", "pass: {episode_return_maen: 1, "), "unknown key 'episode_return_maen'"),
])
def test_bad_example_files_are_refused_naming_file_and_key(tmp_path, text, needle):
    path = tmp_path / "bad.yaml"
    path.write_text(text)
    proc = run(str(path))
    assert proc.returncode == 2
    assert needle in proc.stderr
    assert "bad.yaml" in proc.stderr or "ppq" in proc.stderr
    assert len(proc.stderr.strip().splitlines()) == 1 and "Traceback" not in proc.stderr


def test_seeds_run_in_parallel_on_ray(corridor, tmp_path):
    out = tmp_path / "results.json"
    proc = run(str(corridor), "--seeds", "2", "--parallel", "2", "--out", str(out))
    assert proc.returncode == 0, proc.stdout + proc.stderr
    (summary,) = json.loads(out.read_text())["examples"].values()
    assert [s["seed"] for s in summary["seeds"]] == [0, 1] and summary["seeds_passed"] == 2

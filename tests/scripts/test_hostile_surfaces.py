"""Hostile input to serve.py, evaluate.py, export.py and tune.py: one line on stderr naming
the culprit, exit 2, no traceback, and nothing already written changed."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import time

import pytest

from tests.cli_checks import one_line_error
from tests.extras import needs_extra, require_extra

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
CARTPOLE = os.path.join(REPO, "tuned_examples", "ppo", "CartPole-v1.yaml")


def script(name: str, *args: str, timeout: float = 180) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, os.path.join(REPO, "scripts", name), *args], cwd=REPO,
                          capture_output=True, text=True, timeout=timeout)


def snapshot(folder) -> dict[str, bytes]:
    """Every file and directory below ``folder``, files with their bytes."""
    out: dict[str, bytes] = {}
    for root, dirs, files in os.walk(folder):
        for name in dirs:
            out[os.path.relpath(os.path.join(root, name), folder) + "/"] = b""
        for name in files:
            with open(os.path.join(root, name), "rb") as f:
                out[os.path.relpath(os.path.join(root, name), folder)] = f.read()
    return out


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory) -> str:
    """An untrained CartPole PPO checkpoint (what export and evaluate read is the same)."""
    from rlfleet.algorithms.ppo import PPOConfig

    path = str(tmp_path_factory.mktemp("ckpt") / "checkpoint")
    algo = PPOConfig(env="CartPole-v1", num_envs_per_runner=2, rollout_fragment_length=16, minibatch_size=32,
                     seed=0).build()
    try:
        algo.save(path)
    finally:
        algo.stop()
    return path


# -- serve.py: a port that is taken --------------------------------------------------------------


def test_serve_on_a_taken_port_says_so_in_one_line_and_starts_no_ray(checkpoint):
    require_extra("serve", "ray.serve")
    with socket.socket() as holder:
        holder.bind(("127.0.0.1", 0))
        holder.listen()
        port = holder.getsockname()[1]
        started = time.monotonic()
        run = script("serve.py", "--checkpoint", checkpoint, "--port", str(port), "--duration", "5")
        took = time.monotonic() - started
    line = one_line_error(run, "serve.py", f"port {port} on 127.0.0.1 is already in use", "nearest free port is")
    suggested = int(line.rsplit(" ", 1)[1])
    assert suggested != port and 0 < suggested - port <= 100
    assert took < 60  # Ray never started: it would have logged (and taken ~10 s to fail)


@pytest.mark.parametrize("port", ["0", "70000"])
def test_serve_refuses_a_port_out_of_range(checkpoint, port):
    run = script("serve.py", "--checkpoint", checkpoint, "--port", port)
    one_line_error(run, "serve.py", f"--port must be in 1..65535, got {port}")


# -- evaluate.py --onnx: a file that is not what its contract says -----------------------------


@pytest.fixture(scope="module")
def exported(checkpoint, tmp_path_factory) -> str:
    require_extra("export", "onnx")
    out = str(tmp_path_factory.mktemp("onnx") / "policy.onnx")
    run = script("export.py", "--checkpoint", checkpoint, "--out", out)
    assert run.returncode == 0, run.stderr
    return out


def test_evaluate_onnx_on_a_file_that_is_not_onnx_is_one_line(exported, tmp_path):
    require_extra("export", "onnxruntime")
    fake = tmp_path / "fake.onnx"
    fake.write_bytes(b"this is not an ONNX model\n" * 10)
    with open(exported + ".json", encoding="utf-8") as f:
        (tmp_path / "fake.onnx.json").write_text(f.read(), encoding="utf-8")
    before = snapshot(tmp_path)
    run = script("evaluate.py", "--onnx", str(fake), "--episodes", "1")
    one_line_error(run, "evaluate.py", f"--onnx {str(fake)!r}", "not an ONNX model")
    assert snapshot(tmp_path) == before


@pytest.mark.parametrize("contract,needle", [
    ("", "is not JSON"),
    ("[1, 2]", "not an rlfleet export contract"),
    ('{"format": "someone-else-1", "inputs": []}', "not an rlfleet export contract"),
    ('{"format": "rlfleet-onnx-1"}', "lacks 'action_space'"),
    ('{"format": "rlfleet-onnx-1", "env": "CartPole-v1", "weights_version": 0, "inputs": [{"name": "x", '
     '"dtype": "float32"}], "action_space": {"type": "discrete", "n": 2, "start": 0}}',
     "inputs ['x'], the model's are ['obs']"),
    ('{"format": "rlfleet-onnx-1", "env": "CartPole-v1", "weights_version": 0, "inputs": [{"name": "obs", '
     '"dtype": "float32"}], "action_space": {"type": "wormhole"}}', "action_space"),
])
def test_evaluate_onnx_with_a_foreign_contract_is_one_line(exported, tmp_path, contract, needle):
    require_extra("export", "onnxruntime")
    model = tmp_path / "policy.onnx"
    with open(exported, "rb") as f:
        model.write_bytes(f.read())
    (tmp_path / "policy.onnx.json").write_text(contract, encoding="utf-8")
    run = script("evaluate.py", "--onnx", str(model), "--episodes", "1")
    one_line_error(run, "evaluate.py", f"{str(model)}.json", needle)


# -- export.py --out into a directory that does not exist ---------------------------------------


@pytest.mark.parametrize("fmt,suffix", [("onnx", ".onnx"), ("torchscript", ".pt")])
def test_export_into_a_missing_directory_is_one_line_in_both_formats(checkpoint, tmp_path, fmt, suffix):
    if fmt == "onnx":
        require_extra("export", "onnx")
    missing = tmp_path / "no" / "such"
    out = str(missing / f"policy{suffix}")
    run = script("export.py", "--checkpoint", checkpoint, "--format", fmt, "--out", out)
    one_line_error(run, "export.py", f"export path {out!r}: no directory {str(missing)!r}")
    assert not (tmp_path / "no").exists()


# -- tune.py --resume of a directory whose search.json is not a search's ------------------------


def _valid_search(directory: str) -> dict:
    return {"source": CARTPOLE, "directory": directory, "search": {"lr": {"grid": [1e-3, 2e-3]}}, "overrides": {},
            "scheduler": "fifo", "search_alg": None, "num_samples": 1, "cpus_per_trial": 1.0, "confirm_seeds": 0,
            "confirm_top": 3, "perturbation_interval": None, "stop_env_steps": 1024, "seed": 0, "address": None,
            "num_cpus": 1}


RESUME_CASES = {
    "empty": ("", ["search.json", "is not JSON"]),
    "not json": ("not json {", ["search.json", "is not JSON"]),
    "a list": ("[1, 2]", ["search.json", "not a search's settings"]),
    "foreign keys": ('{"foo": 1}', ["search.json", "unknown key 'foo'"]),
    "a near-miss key": (lambda d: {**_valid_search(d), "num_sample": 2}, ["unknown key 'num_sample'",
                                                                          "did you mean 'num_samples'"]),
    "missing source": (lambda d: {k: v for k, v in _valid_search(d).items() if k != "source"}, ["lacks 'source'"]),
    "wrong type": (lambda d: {**_valid_search(d), "num_samples": "many"}, ["'num_samples'", "'many'"]),
    "search not a mapping": (lambda d: {**_valid_search(d), "search": [1]}, ["'search'"]),
    "unknown scheduler": (lambda d: {**_valid_search(d), "scheduler": "ashaa"}, ["unknown scheduler 'ashaa'"]),
    "a tuned example that is gone": (lambda d: {**_valid_search(d), "source": "/nonexistent/x.yaml"},
                                     ["/nonexistent/x.yaml"]),
    "a bad searched key": (lambda d: {**_valid_search(d), "search": {"lrr": {"grid": [1]}}}, ["'lrr'"]),
    "valid, but no search ran": (_valid_search, ["holds no Tune state", "start it again"]),
}
NEEDS_TUNE = {"valid, but no search ran"}  # the only case that gets as far as asking Tune


@pytest.mark.parametrize("case", [pytest.param(c, marks=[needs_extra("tune", "ray.tune")] if c in NEEDS_TUNE else [])
                                  for c in sorted(RESUME_CASES)])
def test_tune_resume_of_a_foreign_search_json_is_one_line_and_changes_nothing(tmp_path, case):
    content, needles = RESUME_CASES[case]
    logdir = tmp_path / "search"
    logdir.mkdir()
    text = content if isinstance(content, str) else json.dumps(content(str(logdir)))
    (logdir / "search.json").write_text(text, encoding="utf-8")
    (logdir / "notes.txt").write_text("mine\n", encoding="utf-8")
    before = snapshot(tmp_path)
    run = script("tune.py", "--resume", "--logdir", str(logdir))
    one_line_error(run, "tune.py", *needles)
    assert snapshot(tmp_path) == before


def test_search_json_as_tune_py_writes_it_loads_back_and_every_setting_is_checked(tmp_path):
    import dataclasses

    from rlfleet.scripts.tools import search_run
    from rlfleet.scripts.tools.search_run import SearchOptions

    fields = {f.name for f in dataclasses.fields(SearchOptions)}
    assert set(search_run._SETTING_TYPES) == fields  # a new setting needs its type here too
    options = SearchOptions(**_valid_search(str(tmp_path)))
    options.save()
    assert SearchOptions.load(str(tmp_path)) == options
    moved = tmp_path / "moved"
    moved.mkdir()
    os.rename(tmp_path / "search.json", moved / "search.json")
    assert SearchOptions.load(str(moved)).directory == str(moved)  # the search is where its search.json is

"""The loggers (rl/loggers.py): the CSV file's stable header, the trackers read back with
their own clients, and the bad-input lines of ``log``."""

from __future__ import annotations

import csv
import glob
import json
import os
import struct
import subprocess
import sys

import pytest

from rlfleet.algorithms.ppo.config import PPOConfig
from rlfleet.envs.testing import CorridorEnv
from rlfleet.rl import loggers
from rlfleet.rl.config import ConfigError
from rlfleet.rl.loggers import CsvLogger
from tests.extras import require_extra


def read_csv(path):
    with open(path, newline="") as f:
        return list(csv.reader(f))


def test_csv_keeps_one_header_when_a_key_first_appears_later(tmp_path):
    log = CsvLogger(str(tmp_path))
    log.write({"iteration": 1, "env_steps": 10, "ret": float("nan")})
    log.write({"iteration": 2, "env_steps": 20, "ret": 1.5})
    log.write({"iteration": 3, "env_steps": 30, "ret": 2.0, "evaluation/ret": 7.0})  # a later key
    log.write({"iteration": 4, "env_steps": 40, "ret": 2.5})
    log.close(None)
    assert read_csv(tmp_path / "progress.csv") == [
        ["iteration", "env_steps", "ret", "evaluation/ret"],
        ["1", "10", "", ""], ["2", "20", "1.5", ""], ["3", "30", "2.0", "7.0"], ["4", "40", "2.5", ""]]
    again = CsvLogger(str(tmp_path))  # a restored run: rows past its checkpoint go, the header stays
    again.drop_after(2)
    again.write({"iteration": 3, "env_steps": 30, "ret": 9.0})
    again.close(None)
    assert read_csv(tmp_path / "progress.csv")[1:] == [["1", "10", "", ""], ["2", "20", "1.5", ""],
                                                      ["3", "30", "9.0", ""]]


def test_log_names_are_checked_in_one_line(monkeypatch):
    with pytest.raises(ConfigError, match=r"^log: unknown logger 'tensorbord'; choose from jsonl, csv, tensorboard, "
                                          r"mlflow, wandb; did you mean 'tensorboard'\?$"):
        PPOConfig(env="CartPole-v1", log=["tensorbord"])
    monkeypatch.setattr(loggers.importlib.util, "find_spec", lambda name: None)  # as without the extra
    with pytest.raises(ConfigError, match=r"^log: mlflow is not installed: pip install 'rlfleet\[mlflow\]'$"):
        PPOConfig(env="CartPole-v1", log=["mlflow"])
    assert PPOConfig(env="CartPole-v1", log=["csv", "csv"]).log == ["jsonl", "csv"]  # jsonl is always on


def test_train_refuses_an_unknown_logger_before_writing_anything(tmp_path):
    logdir = tmp_path / "run"
    proc = subprocess.run([sys.executable, "-m", "rlfleet.scripts.train", "--algo", "ppo", "--env", "CartPole-v1",
                           "--log", "csv,mlfow", "--logdir", str(logdir)], capture_output=True, text=True)
    assert proc.returncode == 2
    assert proc.stderr.strip().splitlines() == [
        "train.py: error: command line: log: unknown logger 'mlfow'; choose from jsonl, csv, tensorboard, mlflow, "
        "wandb; did you mean 'mlflow'?"]
    assert not logdir.exists()


def _run(tmp_path, log, steps=4):
    config = PPOConfig(env=CorridorEnv, env_config={"length": 3, "max_steps": 8}, num_envs_per_runner=4,
                       rollout_fragment_length=16, minibatch_size=32, num_epochs=1, metrics_smoothing_episodes=20,
                       logdir=str(tmp_path / "run"), log=log, info_metrics={"success": "last"})
    algo = config.build()
    try:
        rows = [algo.train() for _ in range(steps)]
        algo.save(str(tmp_path / "run" / "checkpoint"))
    finally:
        algo.stop()
    return rows


def test_info_metrics_reach_the_csv_and_tensorboard(tmp_path):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    rows = _run(tmp_path, ["csv", "tensorboard"])
    table = read_csv(tmp_path / "run" / "progress.csv")
    column = table[0].index("custom/success")
    assert [float(r[column]) for r in table[1:]] == [r["custom/success"] for r in rows]
    events = EventAccumulator(str(tmp_path / "run"))
    events.Reload()
    assert [(e.step, e.value) for e in events.Scalars("custom/success")] == [
        (r["env_steps"], pytest.approx(r["custom/success"])) for r in rows]


def test_mlflow_holds_the_metrics_config_command_and_checkpoint(tmp_path, monkeypatch):
    require_extra("mlflow", "mlflow")
    from mlflow.tracking import MlflowClient

    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    monkeypatch.setenv("MLFLOW_TRACKING_URI", uri)
    monkeypatch.setenv("MLFLOW_EXPERIMENT_NAME", "tests")
    rows = _run(tmp_path, ["mlflow"])
    client = MlflowClient(uri)
    [run] = client.search_runs([client.get_experiment_by_name("tests").experiment_id])
    assert run.info.run_name == "run" and run.info.status == "FINISHED"
    history = client.get_metric_history(run.info.run_id, "custom/success")
    assert [(m.step, m.value) for m in history] == [(r["env_steps"], pytest.approx(r["custom/success"])) for r in rows]
    assert run.data.params["lr"] == "0.0003" and run.data.params["info_metrics.success"] == '"last"'
    assert "rlfleet.command" in run.data.tags
    artifacts = {a.path for a in client.list_artifacts(run.info.run_id)}
    assert {"config.json", "checkpoint"} <= artifacts


def wandb_history(run_file):
    """The history rows of an offline W&B run file: LevelDB-style log records (32 KiB
    blocks, a 7-byte header per chunk: CRC, length, type) of ``Record`` protobufs, after a
    7-byte W&B header. Read here because wandb >= 0.19 ships no Python reader."""
    from wandb.proto import wandb_internal_pb2

    data, pos, records, pending = open(run_file, "rb").read(), 7, [], b""
    while pos + 7 <= len(data):
        if 32768 - pos % 32768 < 7:
            pos += 32768 - pos % 32768  # a block's tail too short for a header is padding
            continue
        _, length, kind = struct.unpack("<IHB", data[pos:pos + 7])
        chunk, pos = data[pos + 7:pos + 7 + length], pos + 7 + length
        if kind == 0:
            break
        pending = chunk if kind in (1, 2) else pending + chunk  # full/first, or middle/last
        if kind in (1, 4):
            records.append(pending)
    rows = []
    for raw in records:
        record = wandb_internal_pb2.Record()
        record.ParseFromString(raw)
        if record.WhichOneof("record_type") == "history":
            rows.append({item.key or "/".join(item.nested_key): json.loads(item.value_json)
                         for item in record.history.item})
    return rows


def test_wandb_offline_run_holds_the_history(tmp_path, monkeypatch):
    require_extra("wandb", "wandb")
    for key in ("WANDB_MODE", "WANDB_API_KEY"):
        monkeypatch.delenv(key, raising=False)
    monkeypatch.setenv("HOME", str(tmp_path))  # no ~/.netrc login: offline
    rows = _run(tmp_path, ["wandb"])
    [run_file] = glob.glob(str(tmp_path / "run" / "wandb" / "offline-run-*" / "run-*.wandb"))
    history = wandb_history(run_file)
    assert [h["_step"] for h in history] == [r["iteration"] for r in rows]
    assert [h["custom/success"] for h in history] == [pytest.approx(r["custom/success"]) for r in rows]
    assert [h["env_steps"] for h in history] == [r["env_steps"] for r in rows]
    # and W&B's service process (its command line names this process) ended with the run
    left = subprocess.run(["pgrep", "-f", f"wandb-core.* --pid {os.getpid()}"], capture_output=True, text=True)
    assert left.stdout == ""


def test_mlflow_keeps_a_local_stores_artifacts_beside_it(tmp_path, monkeypatch):
    require_extra("mlflow", "mlflow")
    work = tmp_path / "work"
    work.mkdir()
    monkeypatch.chdir(work)
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{tmp_path / 'store' / 'mlflow.db'}")
    (tmp_path / "store").mkdir()
    _run(tmp_path, ["mlflow"], steps=1)
    assert os.listdir(work) == []  # nothing in the directory the run was started from
    assert os.path.isdir(tmp_path / "store" / "artifacts")

"""Where progress rows go: ``progress.jsonl`` (always), ``progress.csv``, TensorBoard, MLflow
and Weights & Biases, chosen by the config's ``log`` (``train.py --log``, ``--track``).

Each logger takes the same flat row per iteration and is closed with the run's last
checkpoint, which the trackers (MLflow, W&B) upload with the config and the command line.
MLflow and W&B are extras: asking for one that is not installed is one ConfigError line.
"""

from __future__ import annotations

import csv
import importlib.util
import json
import math
import os
import sys
import time
from typing import Any

from rlfleet.rl.config_values import ConfigError, closest
from rlfleet.rl.tb_events import EventWriter

LOGGERS = ("jsonl", "csv", "tensorboard", "mlflow", "wandb")
EXTRAS = {"mlflow": "mlflow", "wandb": "wandb"}
"""Logger -> the module its extra installs (``pip install 'rlfleet[<logger>]'``)."""


def check_loggers(names: list[str]) -> list[str]:
    """``names`` checked and in one canonical form: ``jsonl`` first (it is always on), no
    repeats. An unknown name names the closest; a tracker whose extra is missing says
    what to install."""
    out = ["jsonl"]
    for name in names:
        if name not in LOGGERS:
            raise ConfigError(f"log: unknown logger {name!r}; choose from {', '.join(LOGGERS)}{closest(name, LOGGERS)}")
        if name in EXTRAS and importlib.util.find_spec(EXTRAS[name]) is None:
            raise ConfigError(f"log: {name} is not installed: pip install 'rlfleet[{name}]'")
        if name not in out:
            out.append(name)
    return out


def numeric(row: dict[str, Any]) -> dict[str, float]:
    """The finite numbers of a row (booleans and text left out): what trackers chart."""
    return {k: float(v) for k, v in row.items()
            if isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)}


def jsonable(value: Any) -> Any:
    if isinstance(value, float) and not math.isfinite(value):
        return None  # JSON has no NaN; null reads as "no episode finished yet"
    return value


def _keep_through(rows: list[dict[str, Any]], iteration: int) -> list[dict[str, Any]]:
    return [r for r in rows if int(float(r.get("iteration") or 0)) <= iteration]


class JsonlLogger:
    """``progress.jsonl``: one JSON object per iteration, appended (a restored run goes on
    in the same file)."""

    def __init__(self, logdir: str) -> None:
        self.path = os.path.join(logdir, "progress.jsonl")
        self.file = open(self.path, "a", encoding="utf-8")

    def write(self, row: dict[str, Any]) -> None:
        self.file.write(json.dumps({k: jsonable(v) for k, v in row.items()}) + "\n")
        self.file.flush()

    def drop_after(self, iteration: int) -> None:
        self.file.close()
        with open(self.path, encoding="utf-8") as f:
            kept = [line for line in f if line.strip() and json.loads(line).get("iteration", 0) <= iteration]
        with open(self.path + ".tmp", "w", encoding="utf-8") as f:
            f.writelines(kept)
        os.replace(self.path + ".tmp", self.path)  # atomically: a crash here leaves one file or the other
        self.file = open(self.path, "a", encoding="utf-8")

    def close(self, checkpoint: str | None) -> None:
        self.file.close()


class CsvLogger:
    """``progress.csv`` with one stable header. A key that first appears in a later row
    (the first evaluation, a callback's metric) rewrites the file once with the wider
    header, atomically, older rows leaving that column empty: a reader of the file never
    sees a row longer than its header."""

    def __init__(self, logdir: str) -> None:
        self.path = os.path.join(logdir, "progress.csv")
        self.header: list[str] = []
        if os.path.exists(self.path):  # a restored run continues the file
            with open(self.path, newline="", encoding="utf-8") as f:
                self.header = next(csv.reader(f), [])
        self.file = open(self.path, "a", newline="", encoding="utf-8")

    def _rows(self) -> list[dict[str, Any]]:
        with open(self.path, newline="", encoding="utf-8") as f:
            return list(csv.DictReader(f))

    def _rewrite(self, rows: list[dict[str, Any]]) -> None:
        self.file.close()
        with open(self.path + ".tmp", "w", newline="", encoding="utf-8") as f:
            writer = csv.DictWriter(f, self.header, restval="")
            writer.writeheader()
            writer.writerows(rows)
        os.replace(self.path + ".tmp", self.path)
        self.file = open(self.path, "a", newline="", encoding="utf-8")

    def write(self, row: dict[str, Any]) -> None:
        cells = {k: "" if v is None or (isinstance(v, float) and not math.isfinite(v)) else v for k, v in row.items()}
        new = [k for k in cells if k not in self.header]
        if new:
            old = self._rows() if self.header else []
            self.header += new
            self._rewrite(old)
        csv.DictWriter(self.file, self.header, restval="").writerow(cells)
        self.file.flush()

    def drop_after(self, iteration: int) -> None:
        if self.header:
            self._rewrite(_keep_through(self._rows(), iteration))

    def close(self, checkpoint: str | None) -> None:
        self.file.close()


class TensorBoardLogger:
    """TensorBoard scalars, stepped by env steps (rl/tb_events.py)."""

    def __init__(self, logdir: str) -> None:
        self.writer = EventWriter(logdir)

    def write(self, row: dict[str, Any]) -> None:
        self.writer.add_scalars(int(row.get("env_steps", 0)), list(numeric(row).items()))

    def close(self, checkpoint: str | None) -> None:
        self.writer.close()


def _flat(config: dict[str, Any], prefix: str = "") -> dict[str, str]:
    out: dict[str, str] = {}
    for key, value in config.items():
        if isinstance(value, dict) and value:
            out.update(_flat(value, f"{prefix}{key}."))
        else:
            out[f"{prefix}{key}"] = json.dumps(value, default=str)
    return out


class MlflowLogger:
    """An MLflow run: the config as parameters (and ``config.json``), the command line as a
    tag, every row's numbers as metrics stepped by env steps, the last checkpoint as
    artifacts. The store is ``MLFLOW_TRACKING_URI`` when set, else a local SQLite store in
    ``./mlruns/`` (MLflow 3 keeps its file store in maintenance mode); the experiment is
    ``MLFLOW_EXPERIMENT_NAME`` or ``rlfleet``. It talks through MlflowClient, so a user's
    own active MLflow run is left alone."""

    def __init__(self, logdir: str, config: dict[str, Any]) -> None:
        from mlflow.entities import Param
        from mlflow.tracking import MlflowClient

        uri = os.environ.get("MLFLOW_TRACKING_URI")
        if not uri:
            root = os.path.abspath("mlruns")
            os.makedirs(root, exist_ok=True)
            uri = f"sqlite:///{os.path.join(root, 'mlflow.db')}"
        # A new experiment in a local SQLite store keeps its artifacts beside the database
        # (MLflow would put them under the current directory); a server decides for itself.
        artifacts = (os.path.join(os.path.dirname(uri[len("sqlite:///"):]), "artifacts")
                     if uri.startswith("sqlite:///") else None)
        self.client = MlflowClient(uri)
        name = os.environ.get("MLFLOW_EXPERIMENT_NAME", "rlfleet")
        experiment = self.client.get_experiment_by_name(name)
        experiment_id = (experiment.experiment_id if experiment is not None
                         else self.client.create_experiment(name, artifact_location=artifacts))
        command = " ".join(sys.argv)
        self.run_id = self.client.create_run(experiment_id, run_name=os.path.basename(logdir), tags={
            "rlfleet.command": command, "rlfleet.logdir": logdir, "mlflow.source.name": command}).info.run_id
        params = [Param(k, v[:6000]) for k, v in _flat(config).items()]  # MLflow's limit on a value
        for i in range(0, len(params), 100):  # and on a batch
            self.client.log_batch(self.run_id, params=params[i:i + 100])
        self.client.log_dict(self.run_id, config, "config.json")

    def write(self, row: dict[str, Any]) -> None:
        from mlflow.entities import Metric

        stamp, step = int(time.time() * 1000), int(row.get("env_steps", 0))
        metrics = [Metric(k, v, stamp, step) for k, v in numeric(row).items()]
        for i in range(0, len(metrics), 1000):
            self.client.log_batch(self.run_id, metrics=metrics[i:i + 1000])

    def video(self, path: str, step: int) -> None:
        self.client.log_artifact(self.run_id, path, "videos")

    def close(self, checkpoint: str | None) -> None:
        if checkpoint and os.path.isdir(checkpoint):
            self.client.log_artifacts(self.run_id, checkpoint, "checkpoint")
        self.client.set_terminated(self.run_id)


def _wandb_key_known() -> bool:
    """Whether W&B can reach its server as someone: an API key in the environment or a
    ``wandb login`` entry in ~/.netrc. Without one the run is offline (``wandb sync`` later)."""
    if os.environ.get("WANDB_API_KEY"):
        return True
    netrc = os.path.join(os.path.expanduser("~"), ".netrc")
    try:
        with open(netrc, encoding="utf-8") as f:
            return "api.wandb.ai" in f.read()
    except OSError:
        return False


class WandbLogger:
    """A W&B run in ``LOGDIR/wandb``: project ``WANDB_PROJECT`` or ``rlfleet``, the config
    and command line as its config, every row's numbers as history (stepped by
    iteration, with ``env_steps`` as a column to chart against), the last checkpoint as a
    ``model`` artifact. ``WANDB_MODE`` is honoured; unset, the run is offline unless an
    API key is known."""

    def __init__(self, logdir: str, config: dict[str, Any]) -> None:
        import wandb

        mode = os.environ.get("WANDB_MODE") or ("online" if _wandb_key_known() else "offline")
        self.wandb = wandb
        self.run = wandb.init(project=os.environ.get("WANDB_PROJECT", "rlfleet"), dir=logdir,
                              name=os.path.basename(logdir), mode=mode,
                              config={**config, "command": " ".join(sys.argv)},
                              settings=wandb.Settings(console="off", silent=True))

    def write(self, row: dict[str, Any]) -> None:
        self.run.log(numeric(row), step=int(row.get("iteration", 0)))

    def video(self, path: str, step: int) -> None:
        self.run.log({"video": self.wandb.Video(path, format="mp4")}, step=step)

    def close(self, checkpoint: str | None) -> None:
        if checkpoint and os.path.isdir(checkpoint):
            artifact = self.wandb.Artifact(f"checkpoint-{self.run.id}", type="model")
            artifact.add_dir(checkpoint)
            self.run.log_artifact(artifact)
        self.run.finish()
        # wandb keeps a service process (wandb-core) for the rest of this process's life;
        # a run that ends leaves no process behind (the next run starts its own, ~1 s)
        self.wandb.teardown()


def make_loggers(names: list[str], logdir: str, config: dict[str, Any]) -> list[Any]:
    """The loggers ``names`` asks for, writing into ``logdir``."""
    made: list[Any] = []
    for name in check_loggers(names):
        if name == "jsonl":
            made.append(JsonlLogger(logdir))
        elif name == "csv":
            made.append(CsvLogger(logdir))
        elif name == "tensorboard":
            made.append(TensorBoardLogger(logdir))
        elif name == "mlflow":
            made.append(MlflowLogger(logdir, config))
        else:
            made.append(WandbLogger(logdir, config))
    return made

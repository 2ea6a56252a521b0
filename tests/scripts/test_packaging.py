"""What the installed package holds: every algorithm folder (found, not listed), the tools
the scripts use, and no benchmark or peer-library script."""

from __future__ import annotations

import subprocess
import sys
import zipfile

from tests.scripts.test_train_cli import REPO


def test_the_wheel_holds_every_algorithm_folder_and_no_benchmark(tmp_path):
    built = subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q",
                            "-w", str(tmp_path), REPO], capture_output=True, text=True, timeout=300)
    assert built.returncode == 0, built.stderr[-2000:]
    (wheel,) = tmp_path.glob("rlfleet-*.whl")
    names = set(zipfile.ZipFile(wheel).namelist())
    from rlfleet.algorithms import ALGORITHMS

    for module in ALGORITHMS.values():
        path = module.split(":")[0].replace(".", "/")
        assert f"{path}.py" in names or f"{path}/__init__.py" in names, path
    for path in ("rlfleet/scripts/train.py", "rlfleet/scripts/tools/experiment.py", "rlfleet/rl/replay/loop.py",
                 "rlfleet/rl/models/spec.py", "rlfleet/rl/runners/env_runner.py"):
        assert path in names, path
    assert not [n for n in names if n.startswith("rlfleet/scripts/bench") or "/peers/" in n]

"""The ``ray`` command of the Python running the tests: the console script beside it, or
the same CLI as a module where there is none. Never ``ray`` from PATH, which a venv that
is not activated does not put there (issue 30)."""

from __future__ import annotations

import os
import pathlib
import sys

_BESIDE = pathlib.Path(sys.executable).parent / "ray"
RAY: list[str] = [str(_BESIDE)] if os.access(_BESIDE, os.X_OK) else [sys.executable, "-m", "ray.scripts.scripts"]

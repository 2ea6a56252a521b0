"""What a command-line failure must look like: exit 2, one line on stderr naming the
culprit, no traceback."""

from __future__ import annotations

import subprocess


def one_line_error(run: subprocess.CompletedProcess, prefix: str, *needles: str) -> str:
    """The single stderr line of ``run``, checked to start ``<prefix>: error: `` and to
    hold every needle."""
    assert run.returncode == 2, run.stdout + run.stderr
    assert "Traceback" not in run.stderr, run.stderr
    lines = run.stderr.strip().splitlines()
    assert len(lines) == 1, f"stderr should be one line, got:\n{run.stderr}"
    assert lines[0].startswith(f"{prefix}: error: "), lines[0]
    for needle in needles:
        assert needle in lines[0], f"{needle!r} not in {lines[0]!r}"
    return lines[0]

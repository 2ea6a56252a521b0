"""``bench.py sampling --memory`` runs the MLP runner and the same runner with a GRU and an
LSTM side by side and reports each as a share of the MLP's rate (a smoke run: the rates
themselves are benchmark figures, never asserted)."""

import os
import re
import subprocess
import sys

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def test_the_memory_rows_report_a_share_of_the_mlp_runners_rate():
    done = subprocess.run([sys.executable, os.path.join(REPO, "scripts", "bench.py"), "sampling", "--memory",
                           "--repeats", "1", "--seconds", "0.2", "--fragment-length", "16"],
                          capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    for kind in ("gru", "lstm"):
        line = next(line for line in done.stdout.splitlines() if line.startswith(f"memory: {kind}"))
        rate, share = re.search(r"\(128 units\) (\d+) env steps/s .*: ([\d.]+) of the MLP runner's", line).groups()
        assert int(rate) > 0 and float(share) > 0

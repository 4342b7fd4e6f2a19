"""The CI guard of issue 7: fails only on a gross regression of lb's CPU per trade
(more than 3x the documented figure in bench/baseline.json), never on noise."""

import subprocess
import sys


def test_bench_check_guards_against_gross_regressions():
    proc = subprocess.run([sys.executable, "-m", "bench", "--check", "--trades", "400000"],
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "CPU-us/trade" in proc.stdout

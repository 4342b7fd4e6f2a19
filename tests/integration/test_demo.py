"""`make demo` off a terminal (CI, a pipe): plain lines, the pool's table on the demo's stderr."""

from __future__ import annotations

import os
import subprocess
import sys

BIN = os.path.dirname(sys.executable)


def test_the_demo_off_a_terminal_shows_the_pool_and_a_clean_verdict(tmp_path) -> None:
    work = tmp_path / "demo"
    result = subprocess.run([f"{BIN}/lb-demo", "--duration", "4", "--rate", "20k/s", "--workdir", str(work)],
                            capture_output=True, text=True, timeout=120, stdin=subprocess.DEVNULL)
    out = result.stdout + result.stderr
    assert result.returncode == 0, out
    # the pool's live table reaches the demo's stderr (lb gives its worker no fd but 0-2 and
    # the pipes, so it goes through a file the demo follows)
    assert "lb-pool stats: trades" in result.stderr, result.stderr
    assert "lb-pool summary:" in result.stderr, result.stderr
    assert "every trade sent whole was received" in out, out
    assert "\x1b[" not in result.stdout  # no dashboard escape codes off a terminal

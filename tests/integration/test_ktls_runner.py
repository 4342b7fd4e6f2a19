"""The kernel-TLS runner end to end: a User-Mode Linux guest runs a pytest selection.

Runs on the host (it is not a ktls test itself): it boots the guest with ``--uml``
whatever this kernel is, and checks what the selection saw inside and that pytest's
exit status and output come back out.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]

GUEST_TESTS = '''
import os
import socket


def test_inside_the_guest():
    assert os.uname().release != {host_release!r}
    assert "POLYGON_API_KEY" not in os.environ
    assert os.environ["TB_KTLS_REQUIRED"] == "1"
    assert os.environ["TMPDIR"] == "/dev/shm/tmp"
    with open("/proc/net/tls_stat") as stat:
        assert "TlsCurrTxSw" in stat.read()
    with socket.create_server(("127.0.0.1", 0)) as server:
        socket.create_connection(server.getsockname(), timeout=10).close()


def test_fails_on_purpose():
    assert False, "planted failure"
'''


def test_guest_runs_the_selection_and_returns_its_status(tmp_path: Path) -> None:
    (tmp_path / "test_guest.py").write_text(GUEST_TESTS.format(host_release=os.uname().release))
    env = dict(os.environ, PYTHONPATH=str(ROOT), POLYGON_API_KEY="not-for-the-guest",
               PY_COLORS="0")
    result = subprocess.run(
        [sys.executable, "-m", "ci.ktls_runner", "--uml", "--timeout", "120", "--",
         "test_guest.py", "-q"],
        cwd=tmp_path, env=env, capture_output=True, text=True, timeout=180,
    )
    output = result.stdout + result.stderr
    assert result.returncode == 1, output
    assert "1 failed, 1 passed" in result.stdout, output
    assert "planted failure" in result.stdout
    assert "uml-guest: Linux " in result.stdout

"""The JetStream row names, and runs, the nats-server binary it is given."""

from __future__ import annotations

import os
import stat
import sys

import pytest

from bench import jsbench
from harness.jetstream import NATS_SERVER, NatsServer


def _script(path: str, text: str) -> str:
    with open(path, "w") as f:
        f.write(text)
    os.chmod(path, os.stat(path).st_mode | stat.S_IXUSR)
    return path


def test_server_version_is_the_binarys_own(tmp_path: object) -> None:
    fake = _script(os.path.join(str(tmp_path), "nats-server"), "#!/bin/sh\necho 'nats-server: v9.8.7'\n")
    assert jsbench.server_version(fake) == "v9.8.7"


def test_server_version_of_a_missing_binary_says_so(tmp_path: object) -> None:
    assert jsbench.server_version(os.path.join(str(tmp_path), "absent")).startswith("unknown (")


def test_nats_server_runs_the_binary_given(tmp_path: object) -> None:
    store = os.path.join(str(tmp_path), "store")
    # without transparent huge pages by default (docs/jetstream.md): through harness.nothp
    assert NatsServer(store).argv()[:4] == [sys.executable, "-m", "harness.nothp", NATS_SERVER]
    assert NatsServer(store, binary="/opt/nats/nats-server").argv()[3] == "/opt/nats/nats-server"
    assert NatsServer(store, huge_pages=True).argv()[0] == NATS_SERVER


def _thp_enabled(pid: int) -> str:
    with open(f"/proc/{pid}/status") as f:
        return next((line.split()[1] for line in f if line.startswith("THP_enabled:")), "?")


@pytest.mark.parametrize("huge_pages", [False, True])
def test_the_server_runs_with_huge_pages_as_asked(tmp_path: object, huge_pages: bool) -> None:
    server = NatsServer(os.path.join(str(tmp_path), "store"), huge_pages=huge_pages).start()
    try:
        assert server.proc is not None
        state = _thp_enabled(server.proc.pid)
        if state == "?":
            pytest.fail("this kernel's /proc/PID/status has no THP_enabled line")
        assert state == ("1" if huge_pages else "0")
    finally:
        server.cleanup()


def test_nothp_runs_the_command_without_huge_pages() -> None:
    import subprocess

    out = subprocess.run([sys.executable, "-m", "harness.nothp", "cat", "/proc/self/status"],
                         capture_output=True, text=True, timeout=30)
    assert out.returncode == 0
    assert "THP_enabled:\t0" in out.stdout  # the prctl survives the exec
    missing = subprocess.run([sys.executable, "-m", "harness.nothp", "/nonexistent/nats-server"],
                             capture_output=True, text=True, timeout=30)
    assert missing.returncode == 127 and "nonexistent" in missing.stderr
    bare = subprocess.run([sys.executable, "-m", "harness.nothp"], capture_output=True, text=True, timeout=30)
    assert bare.returncode == 2

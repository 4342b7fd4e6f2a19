"""The JetStream row names, and runs, the nats-server binary it is given."""

from __future__ import annotations

import os
import stat

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
    assert NatsServer(store).argv()[0] == NATS_SERVER
    assert NatsServer(store, binary="/opt/nats/nats-server").argv()[0] == "/opt/nats/nats-server"

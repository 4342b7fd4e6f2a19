"""nats-server (alone or as a loopback cluster) and lb-remote as processes, for tests and the bench."""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import tempfile
from typing import Any

from harness.net import free_port
from harness.wait import read_json, read_text, wait_for

# LB_NATS_SERVER: another nats-server binary for the tests and the bench (the default is the one
# on PATH, Debian's package in CI)
NATS_SERVER = os.environ.get("LB_NATS_SERVER") or shutil.which("nats-server") or "/usr/sbin/nats-server"
BIN = os.path.dirname(sys.executable)


class NatsServer:
    """One nats-server with JetStream on a loopback port and its own store directory."""

    def __init__(self, store: str | None = None, *, name: str = "n1", port: int | None = None,
                 cluster_port: int | None = None, routes: list[int] | None = None,
                 cluster: str = "lbtest", config: str | None = None, binary: str | None = None,
                 huge_pages: bool = False) -> None:
        self.binary = binary or NATS_SERVER
        self.huge_pages = huge_pages  # off by default, as docs/jetstream.md advises (harness/nothp.py)
        self.config = config
        self.store = store or tempfile.mkdtemp(prefix="nats-store-")
        os.makedirs(self.store, exist_ok=True)
        self.name = name
        self.port = port or free_port()
        self.cluster_port = cluster_port
        self.routes = routes or []
        self.cluster = cluster
        self.log_path = os.path.join(self.store, f"{name}.log")
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"nats://127.0.0.1:{self.port}"

    def argv(self) -> list[str]:
        argv = [] if self.huge_pages else [sys.executable, "-m", "harness.nothp"]
        argv += [self.binary, "-js", "-a", "127.0.0.1", "-p", str(self.port), "-sd", self.store,
                "-n", self.name, "-l", self.log_path]
        if self.config:
            argv += ["-c", self.config]
        if self.cluster_port:
            argv += ["--cluster_name", self.cluster, "--cluster", f"nats://127.0.0.1:{self.cluster_port}",
                     "--routes", ",".join(f"nats://127.0.0.1:{p}" for p in self.routes)]
        return argv

    def start(self, timeout: float = 15.0) -> NatsServer:
        if os.path.exists(self.log_path):
            os.rename(self.log_path, f"{self.log_path}.{os.getpid()}.{id(self)}.old")
        self.proc = self.spawn()
        wait_for(lambda: "Server is ready" in self.log() or self.proc.poll() is not None, timeout,
                 f"nats-server {self.name} ready")
        if self.proc.poll() is not None:
            raise AssertionError(f"nats-server exited: {self.log()[-2000:]}")
        return self

    def spawn(self) -> subprocess.Popen[bytes]:
        return subprocess.Popen(self.argv(), stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                                stderr=subprocess.DEVNULL)

    def log(self) -> str:
        return read_text(self.log_path)

    def stop(self, sig: int = signal.SIGTERM) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(sig)
            try:
                self.proc.wait(15)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(5)

    def cleanup(self) -> None:
        self.stop(signal.SIGKILL)
        shutil.rmtree(self.store, ignore_errors=True)


class NatsCluster:
    """Three nats-servers routed to each other on loopback."""

    def __init__(self, size: int = 3) -> None:
        cports = [free_port() for _ in range(size)]
        self.nodes = [NatsServer(name=f"n{i + 1}", cluster_port=cports[i],
                                 routes=[p for j, p in enumerate(cports) if j != i]) for i in range(size)]

    @property
    def url(self) -> str:
        return ",".join(n.url for n in self.nodes)

    def start(self) -> NatsCluster:
        procs = []
        for node in self.nodes:
            node.proc = node.spawn()
            procs.append(node)
        for node in procs:
            wait_for(lambda n=node: "Server is ready" in n.log() or n.proc.poll() is not None, 20,
                     f"nats-server {node.name} ready")
            if node.proc.poll() is not None:
                raise AssertionError(f"nats-server {node.name} exited: {node.log()[-2000:]}")
        # every node knows the metadata leader: all three are in the group (a 3-replica stream
        # asked for sooner can be refused for want of peers)
        wait_for(lambda: all("JetStream cluster new metadata leader" in n.log() or
                             "Self is new JetStream cluster metadata leader" in n.log() for n in self.nodes),
                 30, "every node to know the JetStream metadata leader")
        return self

    def cleanup(self) -> None:
        for node in self.nodes:
            node.cleanup()


class RemoteProcess:
    """``lb-remote [options] WORKDIR EXE ARGS...`` with --stats-file and --ready-file."""

    def __init__(self, nats_url: str, stream: str, partitions: str, workdir: str, worker: list[str], *,
                 options: list[str] | None = None, env: dict[str, str] | None = None) -> None:
        self.env = env
        self.state_dir = tempfile.mkdtemp(prefix="lb-remote-")
        self.stats_file = os.path.join(self.state_dir, "stats.json")
        self.ready_file = os.path.join(self.state_dir, "ready.json")
        self.stderr_path = os.path.join(self.state_dir, "stderr.log")
        self.argv = [os.path.join(BIN, "lb-remote"), "--nats", nats_url, "--stream", stream,
                     "--partitions", partitions, "--stats-file", self.stats_file,
                     "--ready-file", self.ready_file, *(options or []), workdir, *worker]
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self) -> RemoteProcess:
        if os.path.exists(self.ready_file):
            os.unlink(self.ready_file)
        stderr = open(self.stderr_path, "ab")  # noqa: SIM115
        self.proc = subprocess.Popen(self.argv, stdin=subprocess.DEVNULL, stderr=stderr, env=self.env)
        stderr.close()
        wait_for(lambda: os.path.exists(self.ready_file) or self.proc.poll() is not None, 20,
                 "lb-remote's ready file")
        return self

    def stats(self) -> dict[str, Any]:
        return read_json(self.stats_file) or {}

    def ready(self) -> dict[str, Any]:
        return read_json(self.ready_file) or {}

    def log(self) -> str:
        return read_text(self.stderr_path)

    def stop(self, timeout: float = 30.0, sig: int = signal.SIGTERM) -> int:
        assert self.proc is not None
        if self.proc.poll() is None:
            self.proc.send_signal(sig)
        return self.proc.wait(timeout)

    def cleanup(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(5)
        shutil.rmtree(self.state_dir, ignore_errors=True)

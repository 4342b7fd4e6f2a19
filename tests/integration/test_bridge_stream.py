"""lb-bridge alone on a pipe of ours: asking for its stream, it waits (bounded log, stoppable)
while the server cannot answer yet, as a cluster still forming cannot, and stops with a usage
error on a refusal that asking again cannot change; its batches are as large as --max-batch
asks, and a message longer than a batch goes alone."""

from __future__ import annotations

import fcntl
import os
import signal
import subprocess
import time

import pytest

from common.pipesize import F_SETPIPE_SZ
from harness.jetstream import BIN, NatsCluster, NatsServer
from harness.wait import read_json, read_text, wait_for

BRIDGE = os.path.join(BIN, "lb-bridge")


def framed(payloads: list[bytes]) -> bytes:
    return b"".join(len(p).to_bytes(4, "little") + p for p in payloads)


class Bridge:
    def __init__(self, tmp: str, url: str, *options: str, prefill: bytes = b"", pipe_size: int = 0) -> None:
        self.read_end, self.write_end = os.pipe()
        if pipe_size:
            fcntl.fcntl(self.write_end, F_SETPIPE_SZ, pipe_size)
        if prefill:
            assert os.write(self.write_end, prefill) == len(prefill)  # fits: the pipe is empty
        self.stats_file = os.path.join(tmp, "bridge.json")
        self.stderr_path = os.path.join(tmp, "bridge.log")
        with open(self.stderr_path, "ab") as stderr:
            self.proc = subprocess.Popen(
                [BRIDGE, "--nats", url, "--stream", "FEED", "--stats-file", self.stats_file,
                 "--stats-interval", "0.1", *options, str(self.read_end)],
                stdin=subprocess.DEVNULL, stderr=stderr, pass_fds=(self.read_end,), cwd=tmp)
        os.close(self.read_end)

    def log(self) -> str:
        return read_text(self.stderr_path)

    def write(self, payloads: list[bytes]) -> None:
        os.write(self.write_end, framed(payloads))

    def cleanup(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(5)
        os.close(self.write_end)


@pytest.fixture
def lone_node():
    """The first node of a three-node cluster whose other two are not started yet."""
    cluster = NatsCluster(3)
    cluster.nodes[0].start()
    yield cluster
    cluster.cleanup()


def _asking(bridge: Bridge) -> bool:
    return "no answer yet" in bridge.log() or bridge.proc.poll() is not None


def test_the_bridge_waits_for_a_forming_cluster_then_publishes(tmp_path, lone_node):
    bridge = Bridge(str(tmp_path), lone_node.nodes[0].url, "--replicas", "3")
    try:
        wait_for(lambda: _asking(bridge), 30, lambda: f"the bridge to ask again ({bridge.log()})")
        assert bridge.proc.poll() is None, bridge.log()
        bridge.write([b'{"sym":"A","q":%d}' % i for i in range(100)])
        waited = time.monotonic()
        for node in lone_node.nodes[1:]:
            node.start()
        stats = wait_for(lambda: (read_json(bridge.stats_file) or {}).get("published_messages"), 60,
                         lambda: f"the bridge to publish ({bridge.log()[-3000:]})")
        assert stats >= 1
        assert "created stream FEED" in bridge.log() and "3 replicas" in bridge.log()
        tries = bridge.log().count("no answer yet")
        # logged the first time and every 20th: at most a handful of lines however long it waited
        assert 1 <= tries <= 2 + int(time.monotonic() - waited) // 20, bridge.log()
        assert "Traceback" not in bridge.log()
        bridge.proc.send_signal(signal.SIGTERM)
        assert bridge.proc.wait(15) == 0, bridge.log()
    finally:
        bridge.cleanup()


def test_a_stop_while_the_bridge_waits_for_its_stream_is_prompt(tmp_path, lone_node):
    bridge = Bridge(str(tmp_path), lone_node.nodes[0].url, "--replicas", "3")
    try:
        wait_for(lambda: _asking(bridge), 30, lambda: f"the bridge to ask again ({bridge.log()})")
        bridge.proc.send_signal(signal.SIGTERM)
        assert bridge.proc.wait(5) == 0, bridge.log()
        assert "Traceback" not in bridge.log()
    finally:
        bridge.cleanup()


def test_a_stream_the_server_refuses_is_a_usage_error(tmp_path):
    server = NatsServer(str(tmp_path / "store")).start()  # not clustered: no 3 replicas, ever
    bridge = Bridge(str(tmp_path), server.url, "--replicas", "3")
    try:
        assert bridge.proc.wait(30) == 2, bridge.log()
        lines = [line for line in bridge.log().splitlines() if line.strip()]
        assert lines and lines[-1].startswith("lb-bridge: stream FEED: "), lines
        assert "(code " in lines[-1] and "no answer yet" not in bridge.log(), lines
        assert "Traceback" not in bridge.log() and len(lines) <= 3, lines
    finally:
        bridge.cleanup()
        server.cleanup()


def _published(bridge: Bridge, total: int) -> dict:
    def done() -> dict | None:
        stats = read_json(bridge.stats_file) or {}
        return stats if stats.get("published_bytes") == total else None

    return wait_for(done, 30, lambda: f"the bridge to publish {total} bytes ({bridge.log()[-2000:]})")


def test_batches_are_as_large_as_max_batch_asks(tmp_path):
    """--max-batch 900K on a full 1 MiB pipe, as lb's are: two messages. The look-ahead pipe is
    asked for twice the batch, over pipe-max-size (1 MiB) unless privileged; a refusal used to
    leave it at 64 KiB, and every batch with it (16 messages here, half the throughput)."""
    server = NatsServer(str(tmp_path / "store")).start()
    data = framed([b'{"sym":"A","q":%06d,' % i + b"x" * 979 + b"}" for i in range(1000)])  # 1004 B each
    bridge = Bridge(str(tmp_path), server.url, "--max-batch", "900K", prefill=data, pipe_size=1 << 20)
    try:
        stats = _published(bridge, len(data))
        assert stats["published_messages"] == 2, (stats, bridge.log())
        assert "Traceback" not in bridge.log()
        # the bridge says which cut it runs: the compiled one wherever it is built (make test)
        from workers import jsproto

        assert ("batch cut: compiled" if jsproto.NATIVE_CUT else "batch cut: Python") in bridge.log()
    finally:
        bridge.cleanup()
        server.cleanup()


def test_a_message_longer_than_a_batch_goes_alone(tmp_path):
    server = NatsServer(str(tmp_path / "store")).start()
    small = [b'{"sym":"A","q":%d}' % i for i in range(50)]
    data = framed([*small[:10], b'{"sym":"B","x":"' + b"y" * 100_000 + b'"}', *small[10:]])
    bridge = Bridge(str(tmp_path), server.url, "--max-batch", "4K", prefill=data, pipe_size=1 << 20)
    try:
        stats = _published(bridge, len(data))
        assert stats["published_messages"] == 3, (stats, bridge.log())  # before, itself, after
        assert "Traceback" not in bridge.log()
    finally:
        bridge.cleanup()
        server.cleanup()

"""The feed through NATS JetStream: simulate -> lb -> lb-bridge -> nats-server -> lb-remote -> worker.

Real processes throughout; nats-server runs on a free loopback port with a store in the test's
temporary directory. Each case checks what the remote worker received against simulate's
ledger, per symbol: count, first and last q, and the CRC-32 chained over the payloads.
"""

from __future__ import annotations

import argparse
import asyncio
import glob
import os
import signal
import subprocess
import sys
import time

import pytest

from harness.jetstream import NATS_SERVER, NatsCluster, NatsServer
from harness.wait import read_json, wait_for
from tests.integration.js_helpers import (
    DUMP,
    ENV,
    RECORDER,
    Chain,
    Recorded,
    compare,
    read_recorded,
    tally,
)
from tests.integration.js_record_worker import DIE_FLAG
from workers.handler import HandlerContext
from workers.verify import VerifyHandler


@pytest.fixture(autouse=True)
def _nats_server_installed() -> None:
    if not os.path.exists(NATS_SERVER):  # a failure, not a skip: `make test` must run these
        pytest.fail("nats-server is not installed: apt-get install nats-server (.ci/run does)")

SLOW_FLAG = "slow.flag"


class SlowVerify(VerifyHandler):
    """verify, sleeping after every batch while the file `slow.flag` exists in the workdir."""

    @classmethod
    def add_options(cls, parser: object) -> None:
        pass  # verify's own (--report) are the pool's already

    def on_batch(self, pipe: int, payloads: list[bytes]) -> None:
        super().on_batch(pipe, payloads)
        if os.path.exists(SLOW_FLAG):
            time.sleep(0.1)


@pytest.fixture
def nats_server(tmp_path):
    server = NatsServer(str(tmp_path / "store")).start()
    yield server
    server.cleanup()


@pytest.fixture
def chain_factory(tmp_path):
    chains: list[Chain] = []

    def make(url: str, **kwargs) -> Chain:
        chain = Chain(str(tmp_path), url, **kwargs)
        chains.append(chain)
        return chain

    yield make
    for chain in chains:
        chain.cleanup()


def assert_verified(chain: Chain, ledger: dict, report_path: str) -> dict:
    report = wait_for(lambda: read_json(report_path), 15, "the verify report")
    assert ledger["totals"]["trades_partial"] == 0
    assert compare(ledger, report) == [], chain.logs()[-3000:]
    assert report["errors"] == dict.fromkeys(report["errors"], 0)
    assert report["gaps"] == 0
    assert report["messages"] == ledger["totals"]["trades_sent"]
    return report


def dumped(workdir: str, npipes: int) -> list[bytes]:
    out = []
    for i in range(npipes):
        with open(os.path.join(workdir, f"pipe_{i}.bin"), "rb") as f:
            out.append(f.read())
    return out


def test_end_to_end_then_replay(nats_server, chain_factory):
    """verify equals the ledger; a second consumer's raw bytes equal what --from-seq 1 and
    --since replay afterwards, pipe by pipe."""
    chain = chain_factory(nats_server.url)
    worker, report = chain.verify_worker()
    since = time.time() - 1
    chain.start_feed()
    remote = chain.remote(worker)
    copy = chain.remote(DUMP, name="copy", durable="copy")
    ledger = chain.ledger()
    sent = ledger["totals"]["trades_sent"]
    chain.wait_delivered(remote, sent)
    chain.wait_delivered(copy, sent)
    assert remote.stop() == 0
    assert copy.stop() == 0
    assert_verified(chain, ledger, report)
    first = dumped(chain.remote_dir("copy"), chain.npipes)
    assert sum(map(len, first)) == remote.stats()["bytes"]

    for name, option in (("from-seq", ["--from-seq", "1"]), ("since", ["--since", f"{since:.3f}"])):
        replay = chain.remote(DUMP, name=name, durable=name, options=option)
        chain.wait_delivered(replay, sent)
        assert replay.stop() == 0
        assert dumped(chain.remote_dir(name), chain.npipes) == first, name

    # the Python reader over the same stream, running verify directly
    direct = os.path.join(chain.remote_dir("direct"), "report.json")
    subprocess.run([sys.executable, "-m", "workers.jetstream", "--nats", nats_server.url,
                    "--stream", chain.stream, "--partitions", f"0-{chain.npipes - 1}", "--idle", "2",
                    "--handler", "verify", "--report", direct], check=True, timeout=60, env=ENV)
    assert_verified(chain, ledger, direct)


def test_bridge_sigkill(nats_server, chain_factory):
    """lb re-forks the bridge; the pipes still hold every unacknowledged byte; republished
    batches are dropped as duplicates: exactly once."""
    chain = chain_factory(nats_server.url, trades=200_000)
    worker, report = chain.verify_worker()
    chain.start_feed()
    remote = chain.remote(worker)
    kills = 0
    for step in range(1, 4):
        wait_for(lambda s=step: chain.bridge_stats.get("stream_offset", 0) > s * 4_000_000, 30,
                 "the bridge to publish")
        os.kill(read_json(chain.lb.ready_file)["worker_pid"], signal.SIGKILL)
        kills += 1
        wait_for(lambda k=kills: chain.lb.stats().get("worker_restarts", 0) >= k, 15,
                 "lb to re-fork the bridge")
    ledger = chain.ledger()
    chain.wait_delivered(remote, ledger["totals"]["trades_sent"])
    assert remote.stop() == 0
    assert_verified(chain, ledger, report)
    stats = chain.lb.stats()
    assert stats["discarded_bytes"] == 0  # the bridge never leaves a pipe inside a message
    assert stats["worker_restarts"] == kills
    assert remote.stats()["gaps"] == 0


def verify_recorded(npipes: int, recorded: Recorded) -> dict:
    """verify's report over what the recorder workers read, pipe by pipe in order."""
    handler = VerifyHandler(HandlerContext(npipes, list(range(npipes)), argparse.Namespace()))
    for pipe, payloads in recorded.payloads.items():
        handler.on_batch(pipe, payloads)
    return handler.snapshot()


def test_remote_worker_sigkill(nats_server, chain_factory):
    """The remote worker SIGKILLed four times, twice inside a message on purpose, twice from
    outside: lb-remote writes the message a dead worker had partly read again, whole, then
    everything after it, from JetStream's unacknowledged messages: exactly once, nothing
    discarded."""
    chain = chain_factory(nats_server.url, trades=150_000)
    chain.start_feed()
    workdir = chain.remote_dir()
    flag = os.path.join(workdir, DIE_FLAG)
    remote = chain.remote(RECORDER)
    kills = 0
    for step in range(1, 5):
        wait_for(lambda s=step: remote.stats().get("messages", 0) > s * 25_000, 30, "delivery")
        pid = remote.ready()["worker_pid"]
        if step % 2:
            open(flag, "w").close()  # the worker kills itself halfway through a message
        else:
            os.kill(pid, signal.SIGKILL)
        kills += 1
        wait_for(lambda p=pid: remote.ready().get("worker_pid") not in (None, p), 15, "a new worker")
        assert not os.path.exists(flag)
    ledger = chain.ledger()
    sent = ledger["totals"]["trades_sent"]
    chain.wait_delivered(remote, sent)
    assert remote.stop() == 0
    recorded = read_recorded(workdir, chain.npipes)
    t = tally(ledger, recorded)
    assert (t.missing, t.duplicates, t.out_of_order, t.crc_mismatch) == (0, 0, 0, 0), t
    assert t.received == sent, t
    report = verify_recorded(chain.npipes, recorded)
    assert compare(ledger, report) == [], chain.logs()[-3000:]
    assert report["errors"] == dict.fromkeys(report["errors"], 0)
    assert report["gaps"] == 0 and report["messages"] == sent
    stats = remote.stats()
    assert stats["worker_restarts"] == kills
    assert stats["discarded_bytes"] == 0
    # the two deaths inside a message at least: each left a partial tail, and it came again whole
    assert recorded.partial_tails >= 2
    assert stats["resent_messages"] == recorded.partial_tails, (stats, recorded.partial_tails)
    assert stats["resent_bytes"] > 0


def test_remote_sigkill_and_restart(nats_server, chain_factory):
    """lb-remote (and with it its worker) SIGKILLed, restarted: delivery resumes where the worker
    had read to, per its last note (every 5 ms), at the start of a message it was inside. Only
    what the worker read after that note can arrive twice; nothing is lost."""
    chain = chain_factory(nats_server.url, trades=150_000)
    chain.start_feed()
    remote = chain.remote(RECORDER)
    kills = 0
    for step in range(1, 3):
        wait_for(lambda s=step: remote.stats().get("messages", 0) > s * 40_000, 30, "delivery")
        remote.proc.send_signal(signal.SIGKILL)
        remote.proc.wait(10)
        kills += 1
        remote.start()
    ledger = chain.ledger()
    sent = ledger["totals"]["trades_sent"]
    wait_for(lambda: (t := tally(ledger, read_recorded(chain.remote_dir(), chain.npipes))).received
             - t.duplicates >= sent, 60, "every trade recorded")
    assert remote.stop() == 0
    t = tally(ledger, read_recorded(chain.remote_dir(), chain.npipes))
    assert t.out_of_order == 0 and t.crc_mismatch == 0, t
    assert t.missing == 0, t
    # twice only what a worker read in its last moments: at most a pipe's fill per partition
    assert t.duplicates <= kills * chain.npipes * (1 << 20) // 100, t
    print(f"lb-remote SIGKILL x{kills}: {t}")


def test_nats_outage(nats_server, chain_factory):
    """nats-server down 5 s, restarted on the same store: the bridge waits and republishes,
    lb's pipes and backlog hold the feed; exactly once at the end."""
    chain = chain_factory(nats_server.url, trades=400_000)
    worker, report = chain.verify_worker()
    chain.start_feed()
    remote = chain.remote(worker)
    wait_for(lambda: remote.stats().get("messages", 0) > 50_000, 30, "delivery")
    nats_server.stop(signal.SIGKILL)
    time.sleep(5)  # the outage itself, not a wait for an event
    nats_server.start()
    ledger = chain.ledger(90)
    chain.wait_delivered(remote, ledger["totals"]["trades_sent"], 90)
    assert remote.stop() == 0
    assert_verified(chain, ledger, report)
    assert chain.bridge_stats["retries"] > 0


def test_cluster_node_killed(tmp_path, chain_factory):
    """Three routed nats-servers, a 3-replica stream; one node SIGKILLed mid-stream."""
    cluster = NatsCluster(3)
    try:
        cluster.start()
        chain = chain_factory(cluster.url, trades=200_000, bridge_options=["--replicas", "3"])
        worker, report = chain.verify_worker()
        chain.start_feed()
        remote = chain.remote(worker)
        wait_for(lambda: remote.stats().get("messages", 0) > 40_000, 60,
                 lambda: f"delivery before the kill ({chain.logs()[-3000:]})")
        cluster.nodes[0].stop(signal.SIGKILL)
        ledger = chain.ledger(90)
        chain.wait_delivered(remote, ledger["totals"]["trades_sent"], 90)
        assert remote.stop() == 0
        assert_verified(chain, ledger, report)
        assert remote.stats()["gaps"] == 0
        print(f"cluster: lb-remote fetched again {remote.stats()['rewinds']} times")
    finally:
        cluster.cleanup()


def test_slow_remote_worker(nats_server, chain_factory):
    """The remote worker crawls: the stream's backlog grows, the bridge publishes everything
    while the worker is behind, lb never pauses its socket; then it catches up, exactly once."""
    chain = chain_factory(nats_server.url, trades=150_000)
    workdir = chain.remote_dir()
    open(os.path.join(workdir, SLOW_FLAG), "w").close()
    worker, report = chain.verify_worker(handler=f"{__name__}:SlowVerify")
    chain.start_feed()
    remote = chain.remote(worker, options=["--window", "65536", "--pipe-size", "65536"])
    ledger = chain.ledger()
    sent = ledger["totals"]["trades_sent"]
    total_bytes = sum(int(p["offset"]) for p in
                      wait_for(lambda: chain.bridge_stats.get("pipes"), 10, "bridge stats").values())
    read = remote.stats()["consumed"]
    assert read < total_bytes // 2, f"the worker was not slow: it had read {read} of {total_bytes} bytes"
    assert chain.lb.stats()["backpressure_pauses"] == 0
    assert total_bytes > 0 and not glob.glob(os.path.join(chain.lb_dir, "*.tmp.*"))
    os.unlink(os.path.join(workdir, SLOW_FLAG))
    chain.wait_delivered(remote, sent, 90)
    assert remote.stop() == 0
    assert_verified(chain, ledger, report)


async def _connects(url: str, cafile: str) -> bool:
    import ssl

    import nats

    try:
        nc = await nats.connect(url, tls=ssl.create_default_context(cafile=cafile), allow_reconnect=False,
                                max_reconnect_attempts=0, connect_timeout=2)
    except Exception:
        return False
    await nc.close()
    return True


def test_tls_and_nkey(tmp_path, chain_factory):
    """tls:// verified with --cafile, nkey authentication from a seed file; the seed is never
    in argv or a log line; a NATS URL with a password is refused (exit 2)."""
    import nkeys
    import trustme

    ca = trustme.CA()
    cert = ca.issue_cert("127.0.0.1", "localhost")
    cert_pem, key_pem, ca_pem = (str(tmp_path / n) for n in ("cert.pem", "key.pem", "ca.pem"))
    cert.cert_chain_pems[0].write_to_path(cert_pem)
    cert.private_key_pem.write_to_path(key_pem)
    ca.cert_pem.write_to_path(ca_pem)
    seed = nkeys.encode_seed(os.urandom(32), nkeys.PREFIX_BYTE_USER)
    public = nkeys.from_seed(bytearray(seed)).public_key.decode()
    seed_file = tmp_path / "user.nk"
    seed_file.write_bytes(seed)
    config = tmp_path / "nats.conf"
    config.write_text(f'tls {{ cert_file: "{cert_pem}", key_file: "{key_pem}" }}\n'
                      f'authorization {{ users = [ {{ nkey: "{public}" }} ] }}\n')
    server = NatsServer(str(tmp_path / "store"), config=str(config)).start()
    try:
        url = f"tls://127.0.0.1:{server.port}"
        assert not asyncio.run(_connects(url, ca_pem)), "the server let a client in without the nkey"
        secrets = ["--nkey", str(seed_file), "--cafile", ca_pem]
        chain = chain_factory(url, trades=30_000, bridge_options=secrets)
        worker, report = chain.verify_worker()
        chain.start_feed()
        remote = chain.remote(worker, options=secrets)
        ledger = chain.ledger()
        chain.wait_delivered(remote, ledger["totals"]["trades_sent"])
        assert remote.stop() == 0
        assert_verified(chain, ledger, report)
        assert seed.decode() not in chain.logs()
        refused = subprocess.run([os.path.join(os.path.dirname(sys.executable), "lb-remote"), "--nats",
                                  f"tls://user:pw@127.0.0.1:{server.port}", "--stream", "FEED",
                                  "--partitions", "0-1", str(tmp_path), "true"],
                                 capture_output=True, text=True, timeout=30)
        assert refused.returncode == 2
        assert "--creds" in refused.stderr and "pw" not in refused.stderr
    finally:
        server.cleanup()


def test_reader_hands_out_what_arrived_without_waiting_for_idle_partitions(nats_server):
    """workers.jetstream keeps pull requests outstanding on every partition: a message on one
    partition comes out of read_batch() as soon as it is stored, while another partition has
    nothing (a gathered fetch per partition held every call for the idle one's timeout), and
    messages published later arrive without a new request round trip per call."""
    import nats
    from nats.js.api import StorageType, StreamConfig

    from common.natsconn import NatsOptions
    from workers.framing import frame_all
    from workers.jetstream import JetStreamReader

    async def scenario() -> None:
        nc = await nats.connect(nats_server.url)
        js = nc.jetstream()
        await js.add_stream(StreamConfig(name="R", subjects=["trades.*"], storage=StorageType.FILE))
        first = [b'{"ev":"T","sym":"A","q":%d}' % q for q in range(3)]
        await js.publish("trades.0", frame_all(first))
        reader = JetStreamReader(NatsOptions([nats_server.url]), "R", [0, 1], batch=4)
        async with reader:
            started = time.monotonic()
            got = await reader.read_batch(timeout=20)
            assert got == [(0, first)]
            assert time.monotonic() - started < 10  # not the idle partition's 20 s
            later = [b'{"ev":"T","sym":"B","q":%d}' % q for q in range(2)]
            for k in range(10):  # more than the credit of one request (batch 4)
                await js.publish(f"trades.{k % 2}", frame_all(later))
            seen: dict[int, int] = {0: 0, 1: 0}
            deadline = time.monotonic() + 10
            while sum(seen.values()) < 20 and time.monotonic() < deadline:
                for partition, payloads in await reader.read_batch(timeout=1):
                    seen[partition] += len(payloads)
            assert seen == {0: 10, 1: 10}
            assert await reader.read_batch(timeout=0.2) == []
        await nc.close()

    asyncio.run(asyncio.wait_for(scenario(), 60))


def test_reader_acks_once_a_partition_and_a_durable_resumes_after_it(nats_server):
    """workers.jetstream's consumers acknowledge all before a message (ack policy `all`): one ack
    a partition per batch, and what it covers is not delivered again to the same durable."""
    import nats
    from nats.js.api import StorageType, StreamConfig

    from common.natsconn import NatsOptions
    from workers.framing import frame_all
    from workers.jetstream import JetStreamReader

    async def scenario() -> None:
        nc = await nats.connect(nats_server.url)
        js = nc.jetstream()
        await js.add_stream(StreamConfig(name="A", subjects=["trades.*"], storage=StorageType.FILE))
        last = {}
        for i in range(10):
            ack = await js.publish(f"trades.{i % 3 and 1}", frame_all([b'{"q":%d}' % i]))
            last[i % 3 and 1] = ack.seq
        reader = JetStreamReader(NatsOptions([nats_server.url]), "A", [0, 1], durable="d", batch=16)
        acks: list[str] = []
        async with reader:
            publish = reader.nc.publish

            def counting(subject: str, payload: bytes = b"", *args: object, **kw: object) -> None:
                if payload == b"+ACK":
                    acks.append(subject)
                publish(subject, payload, *args, **kw)

            reader.nc.publish = counting
            got = 0
            reads = 0
            deadline = time.monotonic() + 10
            while got < 10 and time.monotonic() < deadline:
                got += sum(len(p) for _, p in await reader.read_batch(timeout=1))
                reads += 1
            assert got == 10
        assert 1 <= len(acks) <= 2 * reads and len(acks) < 10  # not one an acked message
        for k in (0, 1):
            info = await js.consumer_info("A", f"d-{k}")
            assert info.ack_floor.stream_seq == last[k]
            assert info.num_ack_pending == 0 and info.num_pending == 0
        again = JetStreamReader(NatsOptions([nats_server.url]), "A", [0, 1], durable="d", batch=16)
        async with again:
            assert await again.read_batch(timeout=0.5) == []
        await nc.close()

    asyncio.run(asyncio.wait_for(scenario(), 60))

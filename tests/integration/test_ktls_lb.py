"""``lb --tls ktls`` as a real process: the feed decrypted by the kernel, routed byte for byte.

Needs a kernel with kTLS: run through ``python -m ci.ktls_runner -- tests -m ktls``.
The websocket server is the lead's scriptable test server (polyserver) over Python's
ssl; the worker writes what each pipe carried, compared with an independent reference.
"""

from __future__ import annotations

import asyncio
import os
import ssl
from pathlib import Path

import pytest

from balancer import ktls
from harness.lb import LbProcess
from harness.wait import async_wait_for
from tests.integration.feedgen import Feed
from tests.integration.polyserver import PolyServer
from tests.integration.test_ktls_peer import Certs, make_certs
from tests.integration.test_lb_feed import pipe_bytes, wait_delivered

pytestmark = pytest.mark.ktls
DEADLINE = 90.0  # lb and its worker start slowly inside User-Mode Linux


@pytest.fixture(scope="module")
def kernel_tls() -> None:
    reason = ktls.probe()
    if reason is not None:
        message = f"{reason}; run these through: python -m ci.ktls_runner -- tests -m ktls"
        if os.environ.get("TB_KTLS_REQUIRED"):
            pytest.fail(message)
        pytest.skip(message)


@pytest.fixture(scope="module")
def certs(kernel_tls: None, tmp_path_factory: pytest.TempPathFactory) -> Certs:
    return make_certs(tmp_path_factory.mktemp("ktls-lb-certs"))


def server_context(certs: Certs, suite: str) -> ssl.SSLContext:
    """TLS 1.3 with OpenSSL's first choice, or TLS 1.2 with exactly ``suite``."""
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.load_cert_chain(*(certs.ecdsa if "ECDSA" in suite else certs.rsa))
    if suite != "TLSv1.3":
        context.maximum_version = ssl.TLSVersion.TLSv1_2
        context.set_ciphers(suite)
    return context


def start_lb(url: str, workdir: Path, worker: list[str], certs: Certs, npipes: int) -> LbProcess:
    lb = LbProcess(url, npipes, str(workdir), worker,
                   options=["--stats-interval", "0", "--tls", "ktls", "--cafile", certs.ca])
    return lb.start(wait_ready=None)


@pytest.mark.parametrize("suite", ["TLSv1.3", "ECDHE-RSA-AES128-GCM-SHA256",
                                   "ECDHE-ECDSA-AES256-GCM-SHA384",
                                   "ECDHE-RSA-CHACHA20-POLY1305"])
async def test_lb_routes_byte_identical_over_kernel_tls(
    tmp_path: Path, dump_worker: list[str], certs: Certs, suite: str
) -> None:
    npipes = 7
    feed = Feed(npipes, seed=len(suite))
    before = ktls.read_tls_stat()
    async with PolyServer(ssl_context=server_context(certs, suite)) as server:
        lb = start_lb(server.url("localhost"), tmp_path, dump_worker, certs, npipes)
        try:
            conn = await server.next_connection(timeout=DEADLINE)
            for frame in feed.frames(40, 150):
                await conn.send_text(frame)
            await wait_delivered(str(tmp_path), feed, timeout=DEADLINE)
            during = ktls.read_tls_stat()
            code = await asyncio.to_thread(lb.stop)
        finally:
            lb.__exit__()
    assert code == 0, lb.log()
    stats = lb.stats()
    assert stats["trades"] == feed.trades
    expected = "TLSv1.3 TLS_AES_256_GCM_SHA384" if suite == "TLSv1.3" else f"TLSv1.2 {suite}"
    assert stats["tls"] == f"ktls {expected}", lb.log()
    # lb's one session is in the kernel both ways (its probe's sockets are long closed).
    assert during["TlsCurrRxSw"] == before["TlsCurrRxSw"] + 1
    assert during["TlsCurrTxSw"] == before["TlsCurrTxSw"] + 1
    assert ktls.read_tls_stat()["TlsDecryptError"] == before["TlsDecryptError"]


async def test_lb_reconnects_over_kernel_tls_after_a_reset(
    tmp_path: Path, dump_worker: list[str], certs: Certs
) -> None:
    npipes = 5
    feed = Feed(npipes, seed=7)
    first_frames = list(feed.frames(15, 100))
    first_expected = [bytes(pipe) for pipe in feed.expected]
    second_frames = list(feed.frames(15, 100))
    before = ktls.read_tls_stat()
    async with PolyServer(ssl_context=server_context(certs, "TLSv1.3")) as server:
        lb = start_lb(server.url("localhost"), tmp_path, dump_worker, certs, npipes)
        try:
            first = await server.next_connection(timeout=DEADLINE)
            for frame in first_frames:
                await first.send_text(frame)
            await async_wait_for(lambda: pipe_bytes(str(tmp_path), npipes) == first_expected,
                                 DEADLINE, "the first connection's trades in their pipes")
            first.reset()
            second = await server.next_connection(timeout=DEADLINE)
            for frame in second_frames:
                await second.send_text(frame)
            await wait_delivered(str(tmp_path), feed, timeout=DEADLINE)
            during = ktls.read_tls_stat()
            code = await asyncio.to_thread(lb.stop)
        finally:
            lb.__exit__()
    assert code == 0, lb.log()
    stats = lb.stats()
    assert stats["reconnects"] >= 1 and stats["tls"].startswith("ktls TLSv1.3"), stats
    assert during["TlsCurrRxSw"] == before["TlsCurrRxSw"] + 1  # the first one is gone
    assert during["TlsRxSw"] >= before["TlsRxSw"] + 2

"""common.natsclient against real nats-server processes on loopback, and against misbehaving
servers of our own: it reconnects, comes back with its subscriptions, finds a cluster's other
nodes, refuses to wait forever on a server that stopped answering, and keeps its memory and
its log bounded whatever a server sends."""

from __future__ import annotations

import asyncio
import logging
import os
import resource
import time

import pytest

from common.jsapi import JetStream
from common.natsclient import AuthError, Client, NotConnected
from harness.jetstream import NATS_SERVER, NatsCluster, NatsServer
from harness.net import free_port


@pytest.fixture(autouse=True)
def _nats_server_installed() -> None:
    if not os.path.exists(NATS_SERVER):  # a failure, not a skip: `make test` must run these
        pytest.fail("nats-server is not installed: apt-get install nats-server (.ci/run does)")


@pytest.fixture
def server(tmp_path):
    node = NatsServer(str(tmp_path / "store")).start()
    yield node
    node.cleanup()


async def until(condition, timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout} s waiting for {what}")
        await asyncio.sleep(0.01)


def test_publish_subscribe_request_and_headers(server):
    async def scenario() -> None:
        client = await Client([server.url], name="test").connect()
        got = []
        client.subscribe("t.>", got.append)
        await client.flush()
        client.publish("t.1", b"plain")
        client.publish("t.2", b"with headers", reply="r.1", headers={"Nats-Msg-Id": "a.1.0", "X": "y"})
        await until(lambda: len(got) == 2, 5, "both messages")
        assert (got[0].subject, got[0].data, got[0].hdr) == ("t.1", b"plain", b"")
        assert (got[1].reply, got[1].data) == ("r.1", b"with headers")
        assert got[1].headers == {"Nats-Msg-Id": "a.1.0", "X": "y"}
        with pytest.raises(ValueError, match="max_payload"):
            client.publish("t.3", b"x" * (client.max_payload + 1))
        js = JetStream(client)
        info = await js.add_stream({"name": "S", "subjects": ["s.*"], "storage": "file"})
        assert info["config"]["name"] == "S"
        assert (await js.stream_info("S"))["state"]["messages"] == 0
        assert await js.consumer_info("S", "absent") is None
        await client.close()
        assert client.is_closed and not client.is_connected
        with pytest.raises(NotConnected):
            client.publish("t.1", b"after close")

    asyncio.run(asyncio.wait_for(scenario(), 30))


def test_a_restarted_server_gets_the_subscriptions_again(server, caplog):
    async def scenario() -> None:
        events = []
        client = Client([server.url], on_disconnect=lambda: events.append("down"),
                        on_reconnect=lambda: events.append("up"))
        await client.connect()
        got = []
        client.subscribe("after", got.append)
        await client.flush()
        await asyncio.sleep(1.2)  # a connection that lived: its loss is an outage, not a flap
        server.stop()
        await until(lambda: events == ["down"], 10, "the disconnect")
        with pytest.raises(NotConnected):
            client.publish("after", b"lost")
        server.start()
        await until(lambda: events == ["down", "up"], 20, "the reconnect")
        other = await Client([server.url]).connect()
        other.publish("after", b"hello again")
        await until(lambda: got, 5, "the message on the old subscription")
        assert got[0].data == b"hello again" and client.reconnects == 1
        await other.close()
        await client.close()

    with caplog.at_level(logging.WARNING, logger="nats"):
        asyncio.run(asyncio.wait_for(scenario(), 60))
    lines = log_lines(caplog)
    # the outage in a line when it begins and one when it ends (and the first failed attempt,
    # if one failed: server.start() above holds the event loop until the server is up)
    assert sum("disconnected from NATS" in line for line in lines) == 1, lines
    assert sum("cannot connect" in line for line in lines) <= 1, lines
    assert sum("reconnected to NATS" in line for line in lines) == 1, lines


def test_a_cluster_node_lost_the_client_moves_to_another():
    cluster = NatsCluster(3).start()
    try:
        async def scenario() -> None:
            first = cluster.nodes[0]
            client = await Client([first.url]).connect()  # told of one node only
            await until(lambda: len(client.servers) == 3, 10, "the other nodes from INFO")
            got = []
            client.subscribe("c", got.append)
            await client.flush()
            first.stop()
            await until(lambda: client.reconnects == 1 and client.is_connected, 20, "a reconnect")
            assert client.connected_url is not None and client.connected_url.port != first.port
            await client.flush()
            sender = await Client([cluster.nodes[1].url]).connect()
            sender.publish("c", b"via another node")
            await until(lambda: got, 10, "the message")
            await sender.close()
            await client.close()

        asyncio.run(asyncio.wait_for(scenario(), 60))
    finally:
        cluster.cleanup()


def test_refused_credentials_fail_the_first_connect_at_once(tmp_path):
    import nkeys

    def seed_file(name: str) -> tuple[str, str]:
        seed = nkeys.encode_seed(os.urandom(32), nkeys.PREFIX_BYTE_USER)
        path = tmp_path / name
        path.write_bytes(seed)
        return str(path), nkeys.from_seed(bytearray(seed)).public_key.decode()

    good, public = seed_file("good.nk")
    bad, _ = seed_file("bad.nk")
    config = tmp_path / "nats.conf"
    config.write_text(f'authorization {{ users = [ {{ nkey: "{public}" }} ] }}\n')
    node = NatsServer(str(tmp_path / "store"), config=str(config)).start()
    try:
        async def scenario() -> None:
            started = time.monotonic()
            with pytest.raises(AuthError):
                await Client([node.url], nkey=bad).connect()
            assert time.monotonic() - started < 5
            client = await Client([node.url], nkey=good).connect()
            await client.flush()
            await client.close()

        asyncio.run(asyncio.wait_for(scenario(), 30))
    finally:
        node.cleanup()


# -- misbehaving servers of our own -----------------------------------------------------------

INFO = b'INFO {"server_id":"FAKE","version":"9.9.9","proto":1,"headers":true,"max_payload":1048576}\r\n'


class FakeServer:
    """Accepts connections on loopback; `behave(reader, writer)` is the server's side of each."""

    def __init__(self, behave) -> None:
        self.behave = behave
        self.connections = 0
        self.port = free_port()
        self.server: asyncio.AbstractServer | None = None

    async def __aenter__(self) -> FakeServer:
        async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            self.connections += 1
            try:
                await self.behave(reader, writer)
            except (ConnectionError, asyncio.IncompleteReadError):
                pass
            finally:
                writer.close()

        self.server = await asyncio.start_server(handle, "127.0.0.1", self.port)
        return self

    async def __aexit__(self, *exc: object) -> None:
        assert self.server is not None
        self.server.close()

    @property
    def url(self) -> str:
        return f"nats://127.0.0.1:{self.port}"


async def handshake(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    writer.write(INFO)
    await reader.readuntil(b"PING\r\n")  # after CONNECT
    writer.write(b"PONG\r\n")
    await writer.drain()


def log_lines(caplog) -> list[str]:
    return [r.getMessage() for r in caplog.records if r.name == "nats"]


def test_a_server_that_stops_answering_pings_is_left(caplog):
    async def silent(reader, writer) -> None:
        await handshake(reader, writer)
        while await reader.read(65536):  # reads our PINGs, never answers
            pass

    async def scenario() -> None:
        async with FakeServer(silent) as fake:
            client = await Client([fake.url], ping_interval=0.2, max_pings_out=2).connect()
            started = time.monotonic()
            await until(lambda: fake.connections >= 2, 5, "a new connection")
            assert time.monotonic() - started < 2  # 3 intervals, not a TCP timeout
            await client.close()

    with caplog.at_level(logging.WARNING, logger="nats"):
        asyncio.run(asyncio.wait_for(scenario(), 20))
    assert any("stopped answering pings" in line for line in log_lines(caplog))


@pytest.mark.parametrize("garbage", [
    b"x" * (1 << 20),  # a control line that never ends
    b"MSG t 1 99999999999\r\n",  # a message bigger than anything allowed
    b"HMSG t 1 50 10\r\n" + b"y" * 64,  # a header longer than its message
    b"WHAT IS THIS\r\n",
])
def test_garbage_from_a_server_costs_a_reconnect_with_bounded_memory_and_log(garbage, caplog):
    async def hostile(reader, writer) -> None:
        await handshake(reader, writer)
        for _ in range(8):
            writer.write(garbage)
            await writer.drain()
        await reader.read(65536)

    async def scenario() -> None:
        async with FakeServer(hostile) as fake:
            client = Client([fake.url], reconnect_wait=0.05)
            client.subscribe("t", lambda msg: None)
            await client.connect()
            await until(lambda: fake.connections >= 10, 15, "ten connections")
            await client.close()

    before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    with caplog.at_level(logging.WARNING, logger="nats"):
        asyncio.run(asyncio.wait_for(scenario(), 30))
    grown_kib = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - before
    assert grown_kib < 64 * 1024, f"RSS grew by {grown_kib} KiB"
    lines = log_lines(caplog)
    assert any("protocol error" in line for line in lines), lines[:5]
    assert all(len(line) < 400 for line in lines)  # the server's bytes are cut, never dumped
    assert len(lines) <= 6, lines  # the first failure, not one per connection


def test_a_server_that_closes_after_info_is_retried_with_a_pause(caplog):
    async def rude(reader, writer) -> None:
        writer.write(INFO)
        await writer.drain()

    async def scenario() -> tuple[int, float]:
        async with FakeServer(rude) as fake:
            client = Client([fake.url], reconnect_wait=0.25, connect_timeout=0.5)
            attempt = asyncio.ensure_future(client.connect())
            started = time.monotonic()
            await asyncio.sleep(2.0)
            assert not attempt.done()  # still waiting it out, not failed
            attempt.cancel()
            await client.close()
            return fake.connections, time.monotonic() - started

    with caplog.at_level(logging.WARNING, logger="nats"):
        connections, elapsed = asyncio.run(asyncio.wait_for(scenario(), 20))
    assert 2 <= connections <= elapsed / 0.25 + 2  # paced, not a busy loop
    tries = [line for line in log_lines(caplog) if "cannot connect" in line]
    assert 1 <= len(tries) <= 2  # the first failure and every 20th


def test_a_failing_handler_costs_neither_the_connection_nor_later_messages(server, caplog):
    async def scenario() -> list[BaseException]:
        errors: list[BaseException] = []
        client = await Client([server.url], on_handler_error=errors.append).connect()
        got = []

        def handler(msg):
            if msg.data == b"bad":
                raise ValueError("cannot take this one")
            got.append(msg.data)

        client.subscribe("h", handler)
        await client.flush()
        for data in (b"one", b"bad", b"two"):
            client.publish("h", data)
        await until(lambda: got == [b"one", b"two"], 5, "the messages after the bad one")
        assert client.reconnects == 0 and client.is_connected
        await client.close()
        return errors

    errors = asyncio.run(asyncio.wait_for(scenario(), 20))
    assert [str(e) for e in errors] == ["cannot take this one"]


def test_flush_waits_for_its_own_pong_not_a_keepalives():
    pings: list[float] = []

    async def slow_pongs(reader, writer) -> None:
        await handshake(reader, writer)
        while True:
            line = await reader.readline()
            if not line:
                return
            if line == b"PING\r\n":
                pings.append(time.monotonic())
                await asyncio.sleep(0.2)  # answers every PING late, in order
                writer.write(b"PONG\r\n")
                await writer.drain()

    async def scenario() -> None:
        async with FakeServer(slow_pongs) as fake:
            client = await Client([fake.url], ping_interval=0.05, max_pings_out=100).connect()
            await until(lambda: pings, 5, "a keepalive PING")
            started = time.monotonic()
            await client.flush(timeout=5)
            # the keepalive's PONG came first; flush returned only on the second one
            assert len(pings) >= 2 and time.monotonic() - started >= 0.3
            await client.close()

    asyncio.run(asyncio.wait_for(scenario(), 20))


# -- --creds: a server in operator mode, with JWTs minted here (NATS JWT v2: a header, the
# claims, an ed25519 signature by the issuer's nkey; the operator signs the accounts, the
# account signs the user) ---------------------------------------------------------------------


def _b64(data: bytes) -> str:
    import base64

    return base64.urlsafe_b64encode(data).decode().rstrip("=")


def _jwt(issuer, subject: str, name: str, nats_claims: dict) -> str:
    import hashlib
    import json

    claims = {"iat": int(time.time()), "iss": issuer.public_key.decode(), "name": name, "sub": subject,
              "nats": nats_claims}
    claims["jti"] = _b64(hashlib.sha256(json.dumps(claims, sort_keys=True).encode()).digest())
    header = _b64(json.dumps({"typ": "JWT", "alg": "ed25519-nkey"}).encode())
    signing = f"{header}.{_b64(json.dumps(claims).encode())}"
    return f"{signing}.{_b64(issuer.sign(signing.encode()))}"


def _keys(prefix: int):
    import nkeys

    seed = nkeys.encode_seed(os.urandom(32), prefix)
    return seed, nkeys.from_seed(bytearray(seed))


def test_creds_against_a_server_in_operator_mode(tmp_path):
    import nkeys

    _, operator = _keys(nkeys.PREFIX_BYTE_OPERATOR)
    _, account = _keys(nkeys.PREFIX_BYTE_ACCOUNT)
    _, system = _keys(nkeys.PREFIX_BYTE_ACCOUNT)
    _, stranger = _keys(nkeys.PREFIX_BYTE_ACCOUNT)  # not known to the server
    op_pub = operator.public_key.decode()
    plain = {"subs": -1, "data": -1, "payload": -1, "imports": -1, "exports": -1, "wildcards": True,
             "conn": -1, "leaf": -1}
    with_js = {**plain, "mem_storage": -1, "disk_storage": -1, "streams": -1, "consumer": -1}
    accounts = {acc.public_key.decode(): _jwt(operator, acc.public_key.decode(), name,
                                              {"type": "account", "version": 2, "limits": limits})
                for acc, name, limits in ((account, "FEED", with_js), (system, "SYS", plain))}
    config = tmp_path / "nats.conf"
    preload = ", ".join(f'{pub}: "{token}"' for pub, token in accounts.items())
    config.write_text(f'operator: "{_jwt(operator, op_pub, "op", {"type": "operator", "version": 2})}"\n'
                      f"system_account: {system.public_key.decode()}\n"
                      f"resolver: MEMORY\nresolver_preload: {{ {preload} }}\n")

    def creds(name: str, signer) -> str:
        seed, user = _keys(nkeys.PREFIX_BYTE_USER)
        claims = {"type": "user", "version": 2, "pub": {}, "sub": {}, "subs": -1, "data": -1, "payload": -1}
        token = _jwt(signer, user.public_key.decode(), name, claims)
        path = tmp_path / f"{name}.creds"
        path.write_text(f"-----BEGIN NATS USER JWT-----\n{token}\n------END NATS USER JWT------\n\n"
                        f"-----BEGIN USER NKEY SEED-----\n{seed.decode()}\n------END USER NKEY SEED------\n")
        return str(path)

    node = NatsServer(str(tmp_path / "store"), config=str(config)).start()
    try:
        async def scenario() -> None:
            client = await Client([node.url], creds=creds("feed", account)).connect()
            info = await JetStream(client).add_stream({"name": "J", "subjects": ["j.*"], "storage": "file"})
            assert info["config"]["name"] == "J"
            await client.close()
            with pytest.raises(AuthError):  # signed by an account the operator never signed
                await Client([node.url], creds=creds("intruder", stranger)).connect()

        asyncio.run(asyncio.wait_for(scenario(), 30))
    finally:
        node.cleanup()


def test_a_server_repeating_an_error_cannot_flood_the_log(caplog):
    async def scolding(reader, writer) -> None:
        await handshake(reader, writer)
        writer.write(b"-ERR 'Permissions Violation for Publish to \"t\"'\r\n" * 5000)
        await writer.drain()
        while True:  # then an ordinary server: a PONG for every PING
            line = await reader.readline()
            if not line:
                return
            if line == b"PING\r\n":
                writer.write(b"PONG\r\n")
                await writer.drain()

    async def scenario() -> None:
        async with FakeServer(scolding) as fake:
            client = await Client([fake.url]).connect()
            await asyncio.sleep(0.3)
            await client.flush(timeout=5)  # still connected, still answering
            assert client.reconnects == 0 and client.is_connected
            await client.close()

    with caplog.at_level(logging.WARNING, logger="nats"):
        asyncio.run(asyncio.wait_for(scenario(), 20))
    errors = [line for line in log_lines(caplog) if "server error" in line]
    assert len(errors) == 1 and "Permissions Violation" in errors[0], errors

"""workers.jspub against a real nats-server (started here, on loopback): the acks it reads, and
what nats-py (the independent reference client) reads back of what it published."""

from __future__ import annotations

import asyncio
from typing import Any

import nats
import pytest

from common.jsapi import JetStream
from common.natsclient import Client
from common.natsproto import encode_headers
from harness.jetstream import NatsServer
from workers.jspub import AckInbox, PubAck, PublishError


async def publish(inbox: AckInbox, subject: str, payload: bytes, headers: dict[str, str]) -> Any:
    answer: asyncio.Future[Any] = asyncio.get_running_loop().create_future()
    inbox.publish(subject, payload, encode_headers(headers) if headers else b"", answer.set_result)
    return await asyncio.wait_for(answer, 5)


async def test_acks_duplicates_and_no_stream_from_a_real_server(tmp_path):
    server = NatsServer(str(tmp_path / "store")).start()
    try:
        client = await Client([server.url]).connect()
        try:
            js = JetStream(client)
            await js.add_stream({"name": "PUB", "subjects": ["pub.*"], "storage": "file"})
            inbox = AckInbox(client)
            inbox.start()
            first = await publish(inbox, "pub.0", b"one", {"Nats-Msg-Id": "e.0.0"})
            second = await publish(inbox, "pub.1", b"two", {"Nats-Msg-Id": "e.1.0", "Lb-Messages": "1"})
            again = await publish(inbox, "pub.0", b"one", {"Nats-Msg-Id": "e.0.0"})
            assert first == PubAck("PUB", 1, False)
            assert (second.seq, second.duplicate) == (2, False)
            assert (again.seq, again.duplicate) == (1, True)  # JetStream removed the republish
            subject, headers, data = await js.get_msg("PUB", 2)
            assert (subject, data, headers) == ("pub.1", b"two", {"Nats-Msg-Id": "e.1.0", "Lb-Messages": "1"})
            refused = await publish(inbox, "elsewhere.0", b"x", {})  # no stream listens on it
            assert isinstance(refused, PublishError) and "status 503" in str(refused)
            assert inbox.waiting == 0
            inbox.close()
            # the reference client reads the same message, headers and all
            nc = await nats.connect(server.url, connect_timeout=5, max_reconnect_attempts=0)
            stored = await nc.jetstream().get_msg("PUB", 2)
            assert stored.data == b"two" and stored.headers == {"Nats-Msg-Id": "e.1.0", "Lb-Messages": "1"}
            await nc.close()
        finally:
            await client.close()
    finally:
        server.cleanup()


def test_publish_is_refused_locally_over_the_servers_max_payload(tmp_path):
    async def scenario() -> None:
        server = NatsServer(str(tmp_path / "store")).start()
        try:
            client = await Client([server.url]).connect()
            inbox = AckInbox(client)
            inbox.start()
            with pytest.raises(ValueError, match="max_payload"):
                inbox.publish("pub.0", b"x" * (client.max_payload + 1), b"", lambda answer: None)
            assert inbox.waiting == 0
            await client.close()
        finally:
            server.cleanup()

    asyncio.run(asyncio.wait_for(scenario(), 30))

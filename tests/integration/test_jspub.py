"""workers.jspub against a real nats-server (started here, on loopback): the acks it reads."""

from __future__ import annotations

import nats
import pytest
from nats.js.api import StorageType, StreamConfig

from harness.jetstream import NatsServer
from workers.jspub import AckInbox, PublishError


async def test_acks_duplicates_and_no_stream_from_a_real_server(tmp_path):
    server = NatsServer(str(tmp_path / "store")).start()
    try:
        nc = await nats.connect(server.url, connect_timeout=5, max_reconnect_attempts=0)
        try:
            js = nc.jetstream()
            await js.add_stream(StreamConfig(name="PUB", subjects=["pub.*"], storage=StorageType.FILE))
            inbox = AckInbox(nc)
            await inbox.start()
            first = await inbox.publish("pub.0", b"one", {"Nats-Msg-Id": "e.0.0"}, 5)
            second = await inbox.publish("pub.1", b"two", {"Nats-Msg-Id": "e.1.0"}, 5)
            again = await inbox.publish("pub.0", b"one", {"Nats-Msg-Id": "e.0.0"}, 5)
            assert (first.stream, first.seq, first.duplicate) == ("PUB", 1, False)
            assert (second.seq, second.duplicate) == (2, False)
            assert (again.seq, again.duplicate) == (1, True)  # JetStream removed the republish
            stored = await js.get_msg("PUB", 2)
            assert stored.data == b"two" and stored.headers["Nats-Msg-Id"] == "e.1.0"
            with pytest.raises(PublishError, match="status 503"):  # no stream listens on it
                await inbox.publish("elsewhere.0", b"x", {}, 5)
            assert inbox._waiting == {}
            await inbox.close()
        finally:
            await nc.close()
    finally:
        server.cleanup()

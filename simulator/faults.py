"""Fault injection: every ``--drop-every``, one fault applied to every live connection.

Before any fault the connection stops receiving frames and the server waits (bounded) until
the peer has acknowledged every byte, so the ledger knows exactly which frames arrived
whole. Then, by kind:

- ``reset``: TCP RST (SO_LINGER 0 and close).
- ``close``: a websocket close, 1001 or 1011, and the closing handshake.
- ``stall``: nothing more is sent, nothing read is acted on (pings go unanswered), the TCP
  connection stays open until the peer gives up.
- ``tls-close``: TLS close_notify then TCP close, with no websocket close (plain TCP close
  without TLS).
- ``truncate``: the first half of the next frame, then an RST.
- ``garbage``: a malformed websocket frame (reserved bits and opcode), then silence until
  the peer closes (its close frame or TCP close; bounded by ``--fault-wait``), then a TCP
  close.
- ``badjson``: a well-formed text frame whose payload is not a JSON array, then the same.
- ``random``: one of the above, drawn per drop from the run's seed.
"""

from __future__ import annotations

import asyncio
import random
from collections.abc import Awaitable, Callable

from websockets.exceptions import ConnectionClosed, InvalidState

from simulator import netio
from simulator.config import FAULT_KINDS, Settings
from simulator.connection import Client
from simulator.feed import Feed
from simulator.ledger import RunLedger

GARBAGE_FRAME = b"\xf3\x05junk!"  # FIN + RSV1-3 + reserved opcode 0x3: invalid in every way
BAD_JSON = b'{"ev":"T","sym":"BADJSON","x":4,"i":"1"'  # a text frame, but not a JSON array
CLOSE_CODES = (1001, 1011)


def choose_kind(kind: str, rng: random.Random) -> str:
    return rng.choice(FAULT_KINDS) if kind == "random" else kind


class FaultInjector:
    """Only what it uses of the simulator: the live clients, the feed, the ledger, a way to
    close the port for a while (``refuse``) and the log."""

    def __init__(self, settings: Settings, rng: random.Random, *, clients: dict[int, Client],
                 feed: Feed, ledger: RunLedger, refuse: Callable[[float], None],
                 log: Callable[[str], None]) -> None:
        self.settings = settings
        self.rng = rng
        self.clients = clients
        self.feed = feed
        self.ledger = ledger
        self.refuse = refuse
        self.log = log
        self.actions: dict[str, Callable[[Client], Awaitable[None]]] = {
            "reset": self._reset, "close": self._close, "stall": self._stall,
            "tls-close": self._tls_close, "truncate": self._truncate, "garbage": self._garbage,
            "badjson": self._badjson,
        }
        assert set(self.actions) == set(FAULT_KINDS), "every --fault kind has its action"
        self.drops = 0
        self.tasks: set[asyncio.Task[None]] = set()

    async def run(self) -> None:
        period = self.settings.drop_every
        assert period is not None
        loop = asyncio.get_running_loop()
        start = loop.time()
        while True:
            self.drops += 1
            await asyncio.sleep(max(0.0, start + self.drops * period - loop.time()))
            self.drop(choose_kind(self.settings.fault, self.rng))

    def drop(self, kind: str) -> None:
        targets = [c for c in self.clients.values() if c.session.key and not
                   (c.faulted or c.closing)]
        ids = ", ".join(str(c.id) for c in targets) or "none"
        refuse = self.settings.refuse_for
        outage = f"; port closed for {refuse:g}s" if refuse else ""
        self.log(f"drop {self.drops}: {kind} on connection(s) {ids}{outage}")
        if not targets:
            self.ledger.fault(kind, None, "no live connection")
        if self.settings.refuse_for:
            self.refuse(self.settings.refuse_for)
        for client in targets:
            self._spawn(self.inject(client, kind))

    def _spawn(self, coroutine: object) -> None:
        task = asyncio.ensure_future(coroutine)  # type: ignore[arg-type]
        self.tasks.add(task)
        task.add_done_callback(self.tasks.discard)

    async def inject(self, client: Client, kind: str) -> None:
        client.faulted = kind
        client.end_reason = f"fault:{kind}"
        self.feed.remove(client)
        if client.pinger is not None:
            client.pinger.cancel()
        drained = await client.drain(self.settings.drain_timeout)
        gone = client.transport.is_closing()
        detail = "peer already gone" if gone else "" if drained else \
            "peer had not acknowledged everything"
        event = self.ledger.fault(kind, client.id, detail)
        self.log(f"fault {kind} on connection {client.id} at {event.time:.3f}"
                     + (f" ({detail})" if detail else ""))
        if gone:
            return
        action = self.actions[kind]
        try:
            await action(client)
        except (ConnectionClosed, InvalidState, OSError) as exc:
            self.log(f"fault {kind} on connection {client.id}: the peer left first ({exc})")

    async def _reset(self, client: Client) -> None:
        netio.abort_with_reset(client.transport, client.sock)

    async def _close(self, client: Client) -> None:
        code = self.rng.choice(CLOSE_CODES)
        await client.ws.close(code, "simulated fault")

    async def _stall(self, client: Client) -> None:
        client.ws.deaf = True  # keep reading (to notice the peer leave) but act on nothing

    async def _tls_close(self, client: Client) -> None:
        client.ws.deaf = True
        client.transport.close()  # TLS: close_notify after the buffer; plain: just FIN

    async def _truncate(self, client: Client) -> None:
        client.ws.deaf = True
        batch = self.feed.take(self.feed.batch)
        if batch is None:
            netio.abort_with_reset(client.transport, client.sock)
            return
        frame = client.frame_for(batch, batch.render())
        data, part = frame if frame is not None else (batch.render(), None)
        protocol = client.ws.protocol
        protocol.send_text(data)
        wire = b"".join(protocol.data_to_send())
        client.transport.write(wire[: len(wire) // 2])
        if part is not None:
            self.ledger.partial(client.record, part.count)
        await client.drain(self.settings.drain_timeout)  # so the half frame reaches the peer
        netio.abort_with_reset(client.transport, client.sock)

    async def _garbage(self, client: Client) -> None:
        client.ws.mute = True
        client.transport.write(GARBAGE_FRAME)
        await self._await_peer_close(client)

    async def _badjson(self, client: Client) -> None:
        client.ws.mute = True
        protocol = client.ws.protocol
        protocol.send_text(BAD_JSON)
        for chunk in protocol.data_to_send():
            client.transport.write(chunk)
        await self._await_peer_close(client)

    async def _await_peer_close(self, client: Client) -> None:
        try:
            closed = asyncio.shield(client.ws.wait_closed())
            await asyncio.wait_for(closed, self.settings.fault_wait)
        except TimeoutError:
            client.transport.close()

    async def stop(self) -> None:
        for task in list(self.tasks):
            task.cancel()
        if self.tasks:
            await asyncio.wait(list(self.tasks), timeout=1.0)

"""One client connection: its Polygon session, its data frames, and what it has confirmed.

Data frames bypass ``ServerConnection.send``: the Sans-I/O protocol frames the payload
(``protocol.send_text``) and the bytes go straight to the transport, so a frame costs no
task switch. The connection remembers where each frame ends in its byte stream; a frame
counts as sent whole once the peer has acknowledged every byte up to there.
"""

from __future__ import annotations

import asyncio
import time
from collections import deque
from collections.abc import Callable

from websockets.asyncio.server import ServerConnection
from websockets.exceptions import InvalidState
from websockets.protocol import State

from simulator import netio
from simulator.batches import Batch, TradeListBatch, select
from simulator.ledger import ConnectionRecord, RunLedger
from simulator.protocol import PolygonSession

CONFIRM_INTERVAL = 0.005  # seconds between acknowledgement checks while frames are in flight


class SimConnection(ServerConnection):
    """websockets' server connection with additions for fault injection and the ledger.

    After a fault nothing more may be sent, not even the automatic pongs and close replies:
    ``deaf`` drops incoming bytes unseen (a stalled server: only the end of the TCP stream
    is noticed, and closes the transport); ``mute`` still parses them but discards every
    reply, and closes the transport when the peer's close frame arrives. ``on_close_frame``
    is called when that frame arrives, while the socket can still be questioned.
    ``on_resume`` is called when the write buffer drains below its low-water mark.
    """

    deaf = False
    mute = False
    on_close_frame: Callable[[], None] | None = None
    on_resume: Callable[[], None] | None = None

    def resume_writing(self) -> None:
        super().resume_writing()
        if self.on_resume is not None:
            self.on_resume()

    def data_received(self, data: bytes) -> None:
        if self.deaf:
            return
        if self.mute:
            self.protocol.receive_data(data)
            self.protocol.data_to_send()  # replies withheld
            if self.protocol.close_rcvd is not None or self.protocol.parser_exc is not None:
                self.transport.close()
            return
        super().data_received(data)
        if self.on_close_frame is not None and self.protocol.close_rcvd is not None:
            callback, self.on_close_frame = self.on_close_frame, None
            callback()

    def eof_received(self) -> None:
        if self.deaf or self.mute:
            return  # the transport closes itself; connection_lost follows
        super().eof_received()


class Client:
    def __init__(self, ws: SimConnection, record: ConnectionRecord, ledger: RunLedger,
                 session: PolygonSession) -> None:
        self.ws = ws
        self.record = record
        self.ledger = ledger
        self.session = session
        self.transport = ws.transport
        self.sock = ws.transport.get_extra_info("socket")
        netio.no_delay(self.sock)
        self.loop = asyncio.get_running_loop()
        self.written = 0  # bytes of data frames handed to the transport
        self.pending: deque[tuple[int, Batch]] = deque()  # (end offset, batch) not yet confirmed
        self.checker: asyncio.TimerHandle | None = None
        self.faulted: str | None = None
        self.end_reason: str | None = None
        self.closing = False
        self.pinger: asyncio.Task[None] | None = None
        self.handler: asyncio.Task[None] | None = None
        ws.on_close_frame = self.confirm

    @property
    def id(self) -> int:
        return self.record.id

    @property
    def receives_trades(self) -> bool:
        if self.faulted or self.closing or self.ws.protocol.state is not State.OPEN:
            return False
        return self.session.subscriptions.any_trades

    async def send_statuses(self, frames: list[bytes]) -> None:
        for frame in frames:
            await self.ws.send(frame, text=True)

    def frame_for(self, batch: Batch, payload: bytes) -> tuple[bytes, Batch] | None:
        """What this client gets of a batch: all of it, or its symbols' trades (slow path)."""
        subscriptions = self.session.subscriptions
        if subscriptions.all_trades:
            return payload, batch
        mine = select(batch.trades(), subscriptions.trade_symbols)
        if not mine.payloads:
            return None
        part = TradeListBatch(mine)
        return part.render(), part

    def write_frame(self, data: bytes, batch: Batch) -> int:
        """One text frame to the transport; returns its size on the wire (0 if closing)."""
        protocol = self.ws.protocol
        try:
            protocol.send_text(data)
        except InvalidState:
            self.closing = True
            return 0
        size = 0
        for chunk in protocol.data_to_send():
            self.transport.write(chunk)
            size += len(chunk)
        self.written += size
        self.pending.append((self.written, batch))
        if self.checker is None:
            self.checker = self.loop.call_later(CONFIRM_INTERVAL, self._check)
        return size

    def _check(self) -> None:
        """While frames are in flight, look every few milliseconds at what has arrived, so
        that an abrupt end leaves only the last moments unconfirmed."""
        self.checker = None
        self.confirm()
        if self.pending:
            self.checker = self.loop.call_later(CONFIRM_INTERVAL, self._check)

    def send(self, batch: Batch, payload: bytes) -> bool:
        """Send this client its part of a batch; False once it can take no more frames."""
        frame = self.frame_for(batch, payload)
        if frame is not None:
            self.write_frame(*frame)
        return not self.closing

    @property
    def writable(self) -> bool:
        return not self.ws.paused  # websockets' flow control: the write buffer is below its limit

    def confirm(self) -> None:
        """Account the frames the peer has acknowledged entirely."""
        if not self.pending:
            return
        unconfirmed = netio.unconfirmed(self.transport, self.sock)
        if unconfirmed is None:
            return
        done = self.written - unconfirmed
        pending, ledger, record = self.pending, self.ledger, self.record
        while pending and pending[0][0] <= done:
            ledger.confirm(record, pending.popleft()[1])

    async def drain(self, timeout: float) -> bool:
        """Wait (bounded) until the peer has acknowledged everything; account what it has."""
        deadline = self.loop.time() + timeout
        while True:
            unconfirmed = netio.unconfirmed(self.transport, self.sock)
            if unconfirmed == 0:
                self.confirm()
                return True
            if unconfirmed is None or self.loop.time() >= deadline:
                self.confirm()
                return False
            await asyncio.sleep(0.001)

    def finish(self) -> None:
        """The connection is over: what was never confirmed counts as partial."""
        if self.checker is not None:
            self.checker.cancel()
            self.checker = None
        self.confirm()
        while self.pending:
            self.ledger.partial(self.record, self.pending.popleft()[1].count)
        record = self.record
        record.end_reason = self.end_reason or self._lost_reason()
        record.close_code = self.ws.close_code
        record.subscriptions = sorted(self.session.subscriptions.topics)
        record.end = time.time()  # last: an ended record is final

    def _lost_reason(self) -> str:
        if self.ws.protocol.close_rcvd is not None:
            return "client_close"
        exc = self.ws.connection_exc
        return f"error:connection lost ({exc})" if exc else "error:connection lost"

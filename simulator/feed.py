"""The feed: takes batches from the market (or a replay) when due and sends them to every client.

The market runs only while at least one client receives trades; while none does, its
clock stops, so a client that comes back sees ``q`` continue where the last one left off
(the gaps it sees are exactly the trades it did not get whole). Writes are flow
controlled: while any receiving client's write buffer is above its limit, the feed waits,
which under ``--rate max`` is what sets the pace. A paced feed that falls behind catches
up at full speed; past ``max_lag`` it gives up the backlog and says so in its stats.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from dataclasses import dataclass

from simulator.batches import Batch
from simulator.connection import Client
from simulator.market import SyntheticMarket
from simulator.pacing import FrameClock
from simulator.replay import ReplayError, ReplaySource


@dataclass
class FeedStats:
    trades: int = 0
    frames: int = 0
    bytes: int = 0
    lag: float = 0.0  # seconds behind schedule at the last frame
    lag_resets: int = 0
    dropped_lag: float = 0.0  # seconds of backlog given up
    first_frame: float | None = None  # time.time() of the first and the last frame sent
    last_frame: float | None = None

    def rate(self) -> float:
        """Trades per second between the first frame and the last."""
        if self.first_frame is None or self.last_frame is None:
            return 0.0
        seconds = self.last_frame - self.first_frame
        return self.trades / seconds if seconds > 0 else 0.0

    def to_json(self) -> dict[str, float | int | None]:
        return {"trades": self.trades, "frames": self.frames, "bytes": self.bytes,
                "first_frame": self.first_frame, "last_frame": self.last_frame,
                "trades_per_s": round(self.rate(), 1), "lag_resets": self.lag_resets,
                "backlog_given_up_s": round(self.dropped_lag, 3)}


class Feed:
    def __init__(self, source: SyntheticMarket | ReplaySource, clock: FrameClock | None,
                 batch: int, trades_limit: int | None, stamp_ids: bool, max_lag: float,
                 replay_speed: float | None, on_end: Callable[[str], None]) -> None:
        self.source = source
        self.clock = clock
        self.batch = batch
        self.trades_limit = trades_limit
        self.stamp_ids = stamp_ids
        self.max_lag = max_lag
        self.replay_speed = replay_speed
        self.on_end = on_end
        self.loop = asyncio.get_running_loop()
        self.clients: set[Client] = set()
        self.stats = FeedStats()
        self.frame = 0
        self.paused_at: float | None = self.loop.time()
        self.origin = self.loop.time()
        self.first_t: int | None = None
        self._wakeup: asyncio.Future[None] | None = None
        self.ended = False

    # -- who receives ------------------------------------------------------------------

    def update(self, client: Client) -> None:
        if client.receives_trades:
            self.clients.add(client)
        else:
            self.clients.discard(client)
        self.wake()

    def remove(self, client: Client) -> None:
        self.clients.discard(client)
        self.wake()

    def wake(self) -> None:
        if self._wakeup is not None and not self._wakeup.done():
            self._wakeup.set_result(None)

    async def _sleep(self, seconds: float) -> None:
        """Sleep until ``seconds`` pass or ``wake()`` (clients changed, a buffer drained)."""
        future = self.loop.create_future()
        self._wakeup = future
        handle = self.loop.call_later(seconds, lambda: future.done() or future.set_result(None))
        try:
            await future
        finally:
            handle.cancel()
            self._wakeup = None

    # -- market time -------------------------------------------------------------------

    def elapsed(self) -> float:
        """Market seconds: wall time since start, not counting time with no receiver."""
        now = self.paused_at if self.paused_at is not None else self.loop.time()
        return now - self.origin

    def _pause(self) -> None:
        if self.paused_at is None:
            self.paused_at = self.loop.time()

    def _resume(self) -> None:
        if self.paused_at is not None:
            self.origin += self.loop.time() - self.paused_at
            self.paused_at = None

    # -- the loop ----------------------------------------------------------------------

    async def run(self) -> None:
        try:
            while not self.ended:
                if not self.clients:
                    self._pause()
                    await self._sleep(3600)
                    continue
                self._resume()
                for client in [c for c in self.clients if not c.receives_trades]:
                    self.clients.discard(client)  # closing: take no batch on its behalf
                if not self.clients:
                    continue
                batch = await self._next_batch()
                if batch is None:
                    continue
                self.broadcast(batch)
                await self._flow_control()
        except ReplayError as exc:
            self.ended = True
            self.on_end(f"error:{exc}")

    async def _next_batch(self) -> Batch | None:
        """The next batch once it is due, or None to look around again (clients, the end)."""
        remaining = None
        if self.trades_limit is not None:
            remaining = self.trades_limit - self.stats.trades
            if remaining <= 0:
                return self._end("trades")
        count = self.batch if remaining is None else min(self.batch, remaining)
        if isinstance(self.source, ReplaySource) and self.replay_speed is not None:
            return await self._timed_replay(count)
        if self.clock is not None and self.clock.schedule is not None:
            due = self.clock.due_at(self.frame)
            behind = self.elapsed() - due
            if behind < 0:
                await self._sleep(-behind)
                return None
            self.stats.lag = behind
            if behind > self.max_lag:
                self.origin += behind
                self.stats.lag_resets += 1
                self.stats.dropped_lag += behind
        return self.take(count)

    async def _timed_replay(self, count: int) -> Batch | None:
        source = self.source
        assert isinstance(source, ReplaySource) and self.replay_speed is not None
        next_t = source.peek_t()
        if next_t is None:
            return self._end("replay")
        if self.first_t is None:
            self.first_t = next_t
        now_t = self.first_t + int(self.elapsed() * 1000 * self.replay_speed)
        if next_t > now_t:
            await self._sleep(min((next_t - now_t) / 1000 / self.replay_speed, 1.0))
            return None
        return source.next_batch(count, until_t=now_t)

    def take(self, count: int) -> Batch | None:
        """The next batch from the source (also used for a ``truncate`` fault's frame)."""
        if isinstance(self.source, SyntheticMarket):
            assert self.clock is not None
            batch: Batch | None = self.source.next_batch(self.clock.t_ms(self.frame), count)
        else:
            batch = self.source.next_batch(count)
            if batch is None:
                return self._end("replay")
        self.frame += 1
        return batch

    def _end(self, why: str) -> None:
        if not self.ended:
            self.ended = True
            self.on_end(why)
        return None

    def broadcast(self, batch: Batch) -> None:
        stamp = b"%d" % time.monotonic_ns() if self.stamp_ids else None
        payload = batch.render(stamp)
        for client in tuple(self.clients):
            if not client.send(batch, payload):
                self.clients.discard(client)
        stats = self.stats
        stats.trades += batch.count
        stats.frames += 1
        stats.bytes += len(payload)
        stats.last_frame = time.time()
        if stats.first_frame is None:
            stats.first_frame = stats.last_frame
        if self.trades_limit is not None and stats.trades >= self.trades_limit:
            self._end("trades")

    async def _flow_control(self) -> None:
        """Wait while a receiving client's buffer is full; else just let other tasks run."""
        blocked = [c for c in self.clients if not c.writable]
        if not blocked:
            await asyncio.sleep(0)
            return
        while blocked:
            await self._sleep(0.05)  # woken early by a client's buffer draining
            blocked = [c for c in self.clients if not c.writable]

    def stop(self) -> None:
        self.ended = True
        self.wake()

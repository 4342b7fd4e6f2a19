"""The handler interface: what a worker process does with the messages of its pipes.

A handler is built once per worker process (each pool child has its own) and gets:

- `on_batch(pipe, payloads)`: every message of one read, `pipe` being the global pipe index
  (the position of its fd among the worker's fd arguments). Batches keep per-call overhead
  off the hot path; the payloads of one pipe arrive in pipe order.
- `on_tick(now)`: once per `--stats-interval`.
- `on_framing_error(pipe, error)`: the pipe's bytes were not `[len][payload]`; the reader
  skips to the next valid message afterwards (or the pipe ended inside a message).
- `snapshot()`: a JSON-able summary, taken every interval and at the end. In the pool the
  children send theirs to the pool, which merges them; a re-forked child starts from its
  predecessor's last snapshot through `restore()`.
- `close()`: the end (all pipes at EOF, or SIGTERM/SIGINT).

The class also says how summaries come together (`aggregator()`): `merge` combines the
snapshots of all processes, `on_interval` shows the merged figures each interval, `finish`
writes the final report. A standalone worker uses the same aggregator on its own snapshot.

A user's `--handler module:name` is either such a class or a plain function called for
each message as `function(pipe, payload)`.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from workers.framing import FramingError


@dataclass
class HandlerContext:
    npipes: int
    """Pipes of the whole worker: the number of fd arguments."""
    pipes: list[int]
    """Global indices of the pipes this process reads."""
    options: argparse.Namespace
    label: str = "worker"
    """How this process names itself in log lines, e.g. `lb-pool[2]`."""
    user_options: dict[str, str] = field(default_factory=dict)
    """`--opt KEY=VALUE` pairs, for users' handlers."""

    def log(self, message: str) -> None:
        print(f"{self.label}: {message}", file=sys.stderr, flush=True)


class Aggregator:
    """Combines the snapshots of every worker process; by default keeps them as a list."""

    def merge(self, snapshots: list[Any]) -> Any:
        return [snapshot for snapshot in snapshots if snapshot is not None]

    def on_interval(self, merged: Any, now: float) -> None:
        """Called once per interval with the merged snapshots."""

    def finish(self, merged: Any, accounting: dict[str, Any]) -> None:
        """Called once at the end; `accounting` has what the readers and the pool lost."""


class Handler:
    """Base class with do-nothing defaults; `on_batch` is the one method to write."""

    name = "handler"

    def __init__(self, context: HandlerContext) -> None:
        self.context = context

    @classmethod
    def add_options(cls, parser: argparse.ArgumentParser) -> None:
        """Add this handler's command-line options (shown by --help)."""

    @classmethod
    def aggregator(cls, options: argparse.Namespace, label: str) -> Aggregator:
        return Aggregator()

    def on_batch(self, pipe: int, payloads: list[bytes]) -> None:
        raise NotImplementedError

    def on_tick(self, now: float) -> None:
        pass

    def on_framing_error(self, pipe: int, error: FramingError) -> None:
        self.context.log(str(error))

    def snapshot(self) -> Any:
        return None

    def restore(self, snapshot: Any) -> None:
        pass

    def close(self) -> None:
        pass


class PerMessage(Handler):
    """Adapts a plain `function(pipe, payload)` to the batch interface."""

    function: Callable[[int, bytes], object]

    def on_batch(self, pipe: int, payloads: list[bytes]) -> None:
        function = self.function
        for payload in payloads:
            function(pipe, payload)

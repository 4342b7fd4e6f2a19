"""The hot path: data message payloads in, per-pipe byte batches out.

Each payload is a JSON array of event objects. Every object with a ``sym`` goes
to pipe ``(fnv1a_64(sym) >> 32) % npipes`` as ``[u32 LE length][object bytes]``,
the bytes exactly as received, in arrival order. Objects without ``sym`` are
status events (handed back to the session) or counted as unroutable.

Fast path, for Polygon's exact layout ``[{"ev":"T","sym":"...},{"ev":"T",...}]``:
one ``bytes.split`` on ``},{"e`` cuts the array into one piece per object; a dict
keyed by each piece's first 22 bytes (``v":"T","sym":"`` and the next 8) maps straight to the pending
list of the pipe that symbol hashes to, and the whole dispatch runs inside C
iterators (``map``/``deque``) with no Python bytecode per trade. Batches are
assembled by interleaving precomputed ``}`` + length + ``{"e`` separators with the
pieces, one ``b"".join`` per pipe.

Why the fast path is exact (on valid JSON; RFC 8259 requires UTF-8, see below for what is
done with bytes that are not). The fast path is taken only when (a) the payload starts with
``[{"ev":"T","sym":"`` and ends with ``}]``, (b) it holds exactly one ``{`` byte per piece, and
(c) every piece starts with ``v":"T","sym":"`` (so every object starts with the 17 bytes
``{"ev":"T","sym":"``: the cache key covers all of them, see _KeyCache). Then:

1. Every split point ``},{"e`` is structural. Were its ``{`` inside a string, the ``"`` right
   after it (unescaped: the byte before it is ``{``, not a backslash) would end that string, and
   a string followed by ``e`` is not valid JSON. So the ``{`` is outside any string, and so is
   the ``}`` before it (inside a string, the string would still be open at the ``"``).
2. By (b) the ``{`` bytes are exactly the first one and one per split point: there are no other
   objects, nested or in strings. Each structural ``}`` therefore closes one of these objects;
   the ``}`` of a split point closes the object opened at the previous split (arrays opened
   inside it must close first), and the ``,{`` after it opens the next element of the same
   array. The first object is an element of the top-level array, so by induction every piece is
   one whole top-level element, and the final ``}]`` closes the last object and the array.
3. By (c) every object's bytes begin ``{"ev":"T","sym":"``. Read as JSON tokens from the
   structural ``{``: the string ``"ev"`` (no quote or backslash inside), ``:``, the string
   ``"T"``, ``,``, the string ``"sym"``, ``:``, and an opening ``"``. No byte of these 17 can be
   anything else, so ``sym`` is the object's second key and its first ``sym`` key, and its
   value is a string starting at offset 17. A key such as ``"evabcde\"sym"`` cannot pass (c).
4. That string ends at its first unescaped ``"``. The symbol is taken as the bytes up to the
   first ``"`` only when none of them is a backslash; otherwise (or when the symbol is too long
   for the cache key) the piece is resolved per piece, and any doubt goes to the slow path.

So the fast path routes every object by its first ``sym`` key, the rule of the slow path too
(duplicate keys: RFC 8259 leaves the choice open; the first wins, as in the C original).
Everything else (other layouts, whitespace, nesting) goes through ``orjson`` and a string-aware
scan for the objects' byte spans. The fast path checks structure, not the syntax of every number
inside a trade (the C original checks neither), and it does not validate UTF-8: bytes that are
not UTF-8 pass through byte-identical. The slow path does the same (its JSON parse falls back to
one that keeps undecodable bytes as they are), so the same trades have the same outcome whatever
the layout of the message they came in.
"""

from __future__ import annotations

import json
import re
import struct
from array import array
from collections import deque
from dataclasses import dataclass, field
from itertools import repeat
from operator import itemgetter
from typing import Any

import numpy
import orjson

HEAD = b'{"ev":"T","sym":"'
OPEN = b"[" + HEAD
# Split on 5 bytes, not the whole "},{" + HEAD: CPython 3.11's bytes.split re-runs the two-way
# preprocessing of a needle of 6+ bytes at every occurrence in a large payload, which costs
# more than the search itself; needles under 6 bytes take the plain skip search. The rest of
# the head is checked through the cache key (see _KeyCache), so nothing is lost in rigour.
SPLIT = b'},{"e'
CUT = len(SPLIT) - 2  # bytes of the head that the split removes: '{"e'
REST = HEAD[CUT:]  # 'v":"T","sym":"': how every piece starts in Polygon's layout
FAST_OVERHEAD = 4 + CUT + 1  # length prefix, '{"e', closing brace
SLOW_OVERHEAD = 4

# The cache key: the whole of REST ('v":"T","sym":"') and the next 8 bytes, so symbols of up
# to 7 bytes resolve from the key alone. Every byte before the symbol is part of the key: a
# cached key proves the piece starts with REST (step 3 of the proof above).
SYM_KEY = b'"sym":"'
KEY_START = REST.index(SYM_KEY)
KEY_SYMBOL = len(REST)  # offset of the symbol in a piece
KEY_LEN = KEY_SYMBOL + 8
CACHE_LIMIT = 1 << 20

FNV_OFFSET = 0xCBF29CE484222325
FNV_PRIME = 0x100000001B3
MASK64 = (1 << 64) - 1

_pack_u32 = struct.Struct("<I").pack


def _count_open_braces(payload: bytes) -> int:
    """Number of ``{`` bytes: numpy's vectorised compare is ~4x cheaper than bytes.count on a
    large payload, but its ~1.5 us fixed cost is 10x bytes.count on a one-trade frame."""
    if len(payload) < NUMPY_COUNT_FROM:
        return payload.count(b"{")
    return _count_nonzero(_frombuffer(payload, _uint8) == 0x7B)  # type: ignore[no-any-return]


NUMPY_COUNT_FROM = 4096  # payload bytes (~40 trades) from which numpy counts faster (measured)

_key_of = itemgetter(slice(0, KEY_LEN))
_body_of = itemgetter(slice(1, -1))  # a payload without its [ and ]
_count_nonzero = numpy.count_nonzero
_frombuffer = numpy.frombuffer
_uint8 = numpy.uint8
_consume = deque(maxlen=0).extend


def fnv1a_64(data: bytes) -> int:
    h = FNV_OFFSET
    for byte in data:
        h = ((h ^ byte) * FNV_PRIME) & MASK64
    return h


def pipe_for(symbol: bytes, npipes: int) -> int:
    """The contract: the same mapping as the C original."""
    return (fnv1a_64(symbol) >> 32) % npipes


class RouterError(Exception):
    """A payload that is not a JSON array of objects: the connection must end."""


class _Separators(dict[int, bytes]):
    """piece length -> ``}`` + u32 length + ``{"e``: the bytes between two fast-path pieces."""

    def __missing__(self, n: int) -> bytes:
        value = b"}" + _pack_u32(n + CUT + 1) + HEAD[:CUT]
        self[n] = value
        return value


class _Firsts(dict[int, bytes]):
    """piece length -> u32 length + ``{"e``: the bytes before a batch's first piece."""

    def __missing__(self, n: int) -> bytes:
        value = _pack_u32(n + CUT + 1) + HEAD[:CUT]
        self[n] = value
        return value


_SEPARATORS = _Separators()
_FIRSTS = _Firsts()


@dataclass(slots=True)
class Chunk:
    """A run of framed messages for one pipe, with their sizes (for resync after a worker dies).

    Message *i* is ``lens[i] + overhead`` bytes on the wire. ``lens`` is kept until the worker
    has read the chunk, so it is stored compactly: one byte per message when every length fits.
    """

    data: bytes
    lens: bytes | array[int] | list[int]
    overhead: int


@dataclass(slots=True)
class RouteResult:
    statuses: list[dict[str, Any]] = field(default_factory=list)
    unroutable: list[bytes] = field(default_factory=list)


class _KeyCache(dict[bytes, list[bytes]]):
    """First KEY_LEN bytes of a piece -> the pending list of the pipe its symbol hashes to."""

    def __init__(self, pending: list[list[bytes]], unresolved: list[bytes]) -> None:
        super().__init__()
        self._pending = pending
        self._unresolved = unresolved

    def __missing__(self, key: bytes) -> list[bytes]:
        start = KEY_SYMBOL
        end = key.find(b'"', start)
        if not key.startswith(REST) or end < 0 or b"\\" in key[start:end]:
            target = self._unresolved  # other layout, long symbol, escape: resolve per piece
        else:
            target = self._pending[pipe_for(key[start:end], len(self._pending))]
        if len(self) >= CACHE_LIMIT:
            self.clear()
        self[key] = target
        return target


class Router:
    """Routes payloads into per-pipe pending batches; ``take()`` hands out the bytes to write."""

    def __init__(self, npipes: int) -> None:
        if npipes < 1:
            raise ValueError("npipes must be at least 1")
        self.npipes = npipes
        self._pending: list[list[bytes]] = [[] for _ in range(npipes)]
        self._chunks: list[list[Chunk]] = [[] for _ in range(npipes)]
        self._unresolved: list[bytes] = []
        self._cache = _KeyCache(self._pending, self._unresolved)
        self._pipe_of_symbol: dict[bytes, int] = {}
        self.trades = 0  # objects routed to pipes
        self.slow_messages = 0  # payloads that took the slow path
        self.slow_objects = 0  # objects routed by the slow path
        self.unroutable = 0  # objects with neither sym nor a status

    # -- routing -----------------------------------------------------------------

    def route(self, payload: bytes, result: RouteResult) -> None:
        """Route one data message. Raises RouterError if it is not a JSON array of objects."""
        if payload.startswith(OPEN) and payload.endswith(b"}]"):
            pieces = payload.split(SPLIT)
            if _count_open_braces(payload) == len(pieces):
                pieces[0] = pieces[0][1 + CUT :]
                pieces[-1] = pieces[-1][:-2]
                _consume(map(list.append, map(self._cache.__getitem__, map(_key_of, pieces)), pieces))
                if self._unresolved:
                    self._resolve(payload, pieces, result)
                else:
                    self.trades += len(pieces)
                return
        self._route_slow(payload, result)

    def route_many(self, payloads: list[bytes]) -> bool:
        """Route consecutive messages (one read's small frames) as one, when every one is in
        Polygon's exact layout; False, with nothing routed, when one is not or holds a symbol
        the cache cannot resolve (the caller then routes them one by one with ``route``).

        Exact: each payload starts with ``[{"ev":"T","sym":"`` and ends with ``}]``, so joining
        their bodies with ``,`` puts a split point at every junction and nowhere else (a match
        straddling a junction would need the ``}`` ending a body to be followed by a byte of
        that body); the pieces are byte for byte those of the messages one by one, and the
        joined payload has one ``{`` per piece iff every message does.
        """
        if not all(map(bytes.startswith, payloads, repeat(OPEN))) or not all(
            map(bytes.endswith, payloads, repeat(b"}]"))
        ):
            return False
        joined = b"[" + b",".join(map(_body_of, payloads)) + b"]"
        pieces = joined.split(SPLIT)
        if _count_open_braces(joined) != len(pieces):
            return False
        pieces[0] = pieces[0][1 + CUT :]
        pieces[-1] = pieces[-1][:-2]
        _consume(map(list.append, map(self._cache.__getitem__, map(_key_of, pieces)), pieces))
        if self._unresolved:
            self._unresolved.clear()
            self._undo(pieces)
            return False
        self.trades += len(pieces)
        return True

    def _undo(self, pieces: list[bytes]) -> None:
        """Take back the pending appends of these pieces (the last ones of their pipes)."""
        mine = set(map(id, pieces))
        for pending in self._pending:
            while pending and id(pending[-1]) in mine:
                pending.pop()

    def _resolve(self, payload: bytes, pieces: list[bytes], result: RouteResult) -> None:
        """Undo this message's appends and route it piece by piece (rare: long or escaped symbols)."""
        self._unresolved.clear()
        self._undo(pieces)
        targets = []
        for piece in pieces:
            end = piece.find(b'"', KEY_SYMBOL)
            if not piece.startswith(REST) or end < 0 or b"\\" in piece[KEY_SYMBOL:end]:
                self._route_slow(payload, result)
                return
            targets.append(self._pending[self._pipe(piece[KEY_SYMBOL:end])])
        for target, piece in zip(targets, pieces, strict=True):
            target.append(piece)
        self.trades += len(pieces)

    def _pipe(self, symbol: bytes) -> int:
        pipe = self._pipe_of_symbol.get(symbol)
        if pipe is None:
            pipe = pipe_for(symbol, self.npipes)
            if len(self._pipe_of_symbol) >= CACHE_LIMIT:
                self._pipe_of_symbol.clear()
            self._pipe_of_symbol[symbol] = pipe
        return pipe

    def _route_slow(self, payload: bytes, result: RouteResult) -> None:
        document = _parse(payload)
        if not isinstance(document, list) or not all(isinstance(o, dict) for o in document):
            raise RouterError(f"payload is not a JSON array of objects: {_excerpt(payload)}")
        spans = object_spans(payload)
        if len(spans) != len(document):
            raise RouterError(f"cannot locate the objects of the payload: {_excerpt(payload)}")
        routed = 0
        for obj, (start, stop) in zip(document, spans, strict=True):
            symbol = obj.get("sym")
            if isinstance(symbol, str):
                self._append_framed(self._pipe(_symbol_bytes(symbol)), payload[start:stop])
                routed += 1
            elif obj.get("ev") == "status":
                result.statuses.append(obj)
            else:
                self.unroutable += 1
                result.unroutable.append(payload[start:stop])
        if routed:  # status-only messages are not trades on a slow path
            self.slow_messages += 1
            self.slow_objects += routed
            self.trades += routed

    def _append_framed(self, pipe: int, raw: bytes) -> None:
        self._seal(pipe)
        self._chunks[pipe].append(Chunk(_pack_u32(len(raw)) + raw, [len(raw)], SLOW_OVERHEAD))

    # -- batches -------------------------------------------------------------------

    def _seal(self, pipe: int) -> None:
        """Turn the pipe's pending pieces into one framed chunk."""
        pending = self._pending[pipe]
        m = len(pending)
        if not m:
            return
        try:
            lens: bytes | array[int] = bytes(map(len, pending))  # kept until read: 1 byte a message
        except ValueError:  # a piece of 256 bytes or more
            lens = array("I", map(len, pending))
        out: list[bytes | None] = [None] * (2 * m + 1)
        out[0 : 2 * m : 2] = map(_SEPARATORS.__getitem__, lens)
        out[0] = _FIRSTS[lens[0]]
        out[1 : 2 * m : 2] = pending
        out[2 * m] = b"}"
        self._chunks[pipe].append(Chunk(b"".join(out), lens, FAST_OVERHEAD))  # type: ignore[arg-type]
        pending.clear()

    def take(self) -> list[tuple[int, list[Chunk]]]:
        """Every pipe's routed data since the last call, oldest first, as (pipe, chunks)."""
        batches = []
        pending = self._pending
        chunks = self._chunks
        for pipe in range(self.npipes):
            if pending[pipe]:
                self._seal(pipe)
            if chunks[pipe]:
                batches.append((pipe, chunks[pipe]))
                chunks[pipe] = []
        return batches


def _parse(payload: bytes) -> Any:
    """The payload as JSON, with the rules the fast path follows: the first of duplicate keys
    wins, and bytes that are not UTF-8 are kept (as surrogate escapes, see _symbol_bytes)."""
    try:
        document = orjson.loads(payload)
    except orjson.JSONDecodeError as exc:
        try:
            payload.decode("utf-8")
        except UnicodeDecodeError:
            return _parse_exactly(payload, exc)  # invalid UTF-8: the lenient parse decides
        raise RouterError(f"payload is not valid JSON ({exc}): {_excerpt(payload)}") from None
    # orjson keeps the last of duplicate keys. A duplicate "sym" needs two "sym" keys in one
    # object; spelled without a \u escape each key is the 5 bytes '"sym"', so when those bytes
    # occur exactly once per object that has a sym (and no \u escape occurs), there is none.
    if isinstance(document, list) and (
        b"\\u" in payload
        or payload.count(b'"sym"') != sum(1 for o in document if isinstance(o, dict) and "sym" in o)
    ):
        return _parse_exactly(payload, None)
    return document


def _first_wins(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    obj: dict[str, Any] = {}
    for key, value in pairs:
        obj.setdefault(key, value)
    return obj


def _no_constant(name: str) -> Any:
    raise ValueError(f"{name} is not JSON")


def _parse_exactly(payload: bytes, orjson_error: Exception | None) -> Any:
    """The stdlib parser, first key wins, undecodable bytes kept as lone surrogates (rare)."""
    try:
        return json.loads(payload.decode("utf-8", "surrogateescape"), object_pairs_hook=_first_wins,
                          parse_constant=_no_constant)
    except (ValueError, RecursionError) as exc:
        reason = orjson_error or exc
        raise RouterError(f"payload is not valid JSON ({reason}): {_excerpt(payload)}") from None


def _symbol_bytes(symbol: str) -> bytes:
    """The symbol's bytes as the fast path hashes them (undecodable bytes as they came)."""
    try:
        return symbol.encode()
    except UnicodeEncodeError:
        return symbol.encode("utf-8", "surrogateescape")


_STRING_OR_BRACE = re.compile(rb'"[^"\\]*(?:\\.[^"\\]*)*"|[{}\[\]]', re.DOTALL)


def object_spans(payload: bytes) -> list[tuple[int, int]]:
    """Byte spans of the top-level array's elements that are objects, in a valid JSON array.

    String-aware: braces inside strings (and escaped quotes) do not count.
    """
    spans = []
    depth = 0
    start = -1
    for match in _STRING_OR_BRACE.finditer(payload):
        token = payload[match.start()]
        if token == 0x22:  # a string
            continue
        if token in (0x7B, 0x5B):  # { [
            depth += 1
            if depth == 2 and token == 0x7B:
                start = match.start()
        else:
            if depth == 2 and token == 0x7D:
                spans.append((start, match.end()))
            depth -= 1
    return spans


def _excerpt(payload: bytes, limit: int = 80) -> str:
    text = repr(payload[:limit])
    return text + (f"... ({len(payload)} bytes)" if len(payload) > limit else "")

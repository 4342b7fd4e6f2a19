"""Differential tests: the native data path (balancer._speedups) against the pure-Python one.

Both engines are driven the way Session._on_readable drives them (reads into the decoder, the
native engine first, then the Python decoder and router for whatever it handed back) and must
give byte-identical pipe output, identical resync sizes, counters, events and errors.
"""

from __future__ import annotations

import os
from typing import Any

import orjson
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from balancer import engine, frames
from balancer.frames import FrameDecoder, ProtocolError
from balancer.router import Router, RouterError, RouteResult, pipe_for

pytestmark = pytest.mark.skipif(
    not engine.native_available() and not os.environ.get("LB_REQUIRE_NATIVE"),
    reason="balancer._speedups is not built",
)
if os.environ.get("LB_REQUIRE_NATIVE"):
    assert engine.native_available(), "LB_REQUIRE_NATIVE is set but balancer._speedups did not import"

NPIPES = 7


def frame(payload: bytes, opcode: int = frames.OP_TEXT, fin: bool = True, rsv: int = 0) -> bytes:
    n = len(payload)
    b0 = (0x80 if fin else 0) | rsv | opcode
    if n < 126:
        head = bytes((b0, n))
    elif n < 1 << 16:
        head = bytes((b0, 126)) + n.to_bytes(2, "big")
    else:
        head = bytes((b0, 127)) + n.to_bytes(8, "big")
    return head + payload


def drive(reads: list[bytes], native: bool, max_message: int = 1 << 20) -> dict[str, Any]:
    decoder = FrameDecoder(max_message=max_message, buffer_size=1 << 16)
    router = Router(NPIPES)
    eng = engine.NativeEngine(NPIPES) if native else None
    result = RouteResult()
    out: dict[int, bytearray] = {}
    lens: dict[int, list[tuple[int, int]]] = {}
    events: list[Any] = []
    error = None
    messages = 0
    for data in reads:
        decoder.feed(data)
        try:
            if eng is not None:
                m, _ = eng.run(decoder, router)
                messages += m
            for event in decoder.events():
                if type(event) is bytes:
                    messages += 1
                    router.route(event, result)
                    events.extend(("status", s) for s in result.statuses)
                    events.extend(("unroutable", u) for u in result.unroutable)
                    result.statuses.clear()
                    result.unroutable.clear()
                else:
                    events.append(event)
            decoder.check()
        except (ProtocolError, RouterError) as exc:
            error = (type(exc).__name__, str(exc), getattr(exc, "close_code", None))
        finally:
            for pipe, chunks in router.take():
                for chunk in chunks:
                    out.setdefault(pipe, bytearray()).extend(chunk.data)
                    lens.setdefault(pipe, []).extend((n + chunk.overhead, 0) for n in chunk.lens)
        if error:
            break
    # resync sizes: the wire size of every message, in order (the overhead split may differ)
    sizes = {p: [n for n, _ in v] for p, v in lens.items()}
    return dict(out={p: bytes(b) for p, b in out.items()}, sizes=sizes, events=events, error=error,
                trades=router.trades, unroutable=router.unroutable, messages=messages,
                frames=decoder.frames, buffered=decoder.buffered)


def check_same(reads: list[bytes], max_message: int = 1 << 20) -> dict[str, Any]:
    py = drive(reads, False, max_message)
    nat = drive(reads, True, max_message)
    assert nat == py
    return nat


def split_reads(stream: bytes, cuts: list[int]) -> list[bytes]:
    points = sorted({c % (len(stream) + 1) for c in cuts})
    pieces, last = [], 0
    for p in [*points, len(stream)]:
        pieces.append(stream[last:p])
        last = p
    return [p for p in pieces if p] or [b""]


symbols = st.one_of(
    st.text(alphabet="ABCDEFGHIJKLMNOPQRSTUVWXYZ.", min_size=0, max_size=10),
    st.text(min_size=0, max_size=40),  # non-ASCII, quotes, backslashes, control characters
)


not_utf8 = st.sampled_from([b"\xff", b"\xc3", b"\xed\xa0\x80", b"\x80abc", b"\xf4\x90\x80\x80", b"\xe2\x82"])


@st.composite
def trade(draw: Any) -> bytes:
    sym = draw(symbols)
    layout = draw(st.sampled_from(["compact", "compact", "compact", "spaced", "reordered", "dupsym",
                                   "status", "nosym", "nested", "bracestr", "escapedkey", "notutf8",
                                   "notutf8sym"]))
    rest = b',"i":"%d","x":4,"p":%d.%02d,"s":%d,"t":1700000000000' % (
        draw(st.integers(0, 10**9)), draw(st.integers(0, 9999)), draw(st.integers(0, 99)),
        draw(st.integers(1, 10**6)),
    )
    enc = orjson.dumps(sym)
    if layout == "compact":
        return b'{"ev":"T","sym":' + enc + rest + b"}"
    if layout == "spaced":
        return b'{"ev": "T", "sym": ' + enc + rest + b"}"
    if layout == "reordered":
        return b'{"sym":' + enc + b',"ev":"T"' + rest + b"}"
    if layout == "dupsym":
        return b'{"ev":"T","sym":' + enc + b',"sym":"ZZZ"' + rest + b"}"
    if layout == "escapedkey":  # issue 10 item 4: a key ending in an escaped quote, then "sym"
        return b'{"evabcde\\"sym":"XYZ","sym":' + enc + rest + b"}"
    if layout == "notutf8":  # issue 10 item 8
        return b'{"ev":"T","sym":' + enc + b',"c":"' + draw(not_utf8) + b'"' + rest + b"}"
    if layout == "notutf8sym":
        return b'{"ev":"T","sym":"A' + draw(not_utf8) + b'"' + rest + b"}"
    if layout == "status":
        return b'{"ev":"status","status":"info","message":"hello"}'
    if layout == "nosym":
        return b'{"ev":"T"' + rest + b"}"
    if layout == "nested":
        return b'{"ev":"T","sym":' + enc + b',"c":{"a":[1]}' + rest + b"}"
    return b'{"ev":"T","sym":' + enc + b',"z":"},{\\"ev"}' + rest + b"}"


@st.composite
def message(draw: Any) -> bytes:
    kind = draw(st.sampled_from(["array"] * 4 + ["compact"] * 4 + ["invalid", "notarray", "empty"]))
    if kind == "compact":  # what the native path takes: Polygon's layout, plain symbols
        syms = draw(st.lists(st.text(alphabet="ABCDEFGHIJKLMNOPQRSTUVWXYZ.", max_size=12), min_size=1,
                             max_size=12))
        return b"[" + b",".join(b'{"ev":"T","sym":"%s","p":%d,"x":"%s"}' % (
            s.encode(), i, b"q" * draw(st.integers(0, 300))) for i, s in enumerate(syms)) + b"]"
    if kind == "invalid":
        return b'[{"ev":"T","sym":"A","p":1' + draw(st.sampled_from([b"", b"}", b"},", b"}}]", b"x}]"]))
    if kind == "notarray":
        return b'{"ev":"T","sym":"A"}'
    if kind == "empty":
        return b"[]"
    return b"[" + b",".join(draw(st.lists(trade(), min_size=1, max_size=8))) + b"]"


@st.composite
def stream(draw: Any) -> bytes:
    out = bytearray()
    for payload in draw(st.lists(message(), min_size=1, max_size=6)):
        how = draw(st.sampled_from(["whole"] * 6 + ["binary", "fragmented", "ping_between"]))
        if how == "whole":
            out += frame(payload)
        elif how == "binary":
            out += frame(payload, frames.OP_BINARY)
        else:
            cut = draw(st.integers(0, len(payload)))
            out += frame(payload[:cut], fin=False)
            if how == "ping_between":
                out += frame(b"hi", frames.OP_PING)
            out += frame(payload[cut:], frames.OP_CONTINUATION)
    tail = draw(st.sampled_from([b"", b"", frame(b"\x03\xe8", frames.OP_CLOSE), bytes((0xC1, 0)),
                                 bytes((0x81, 0x80)) + b"abcd", frame(b"x" * 200, frames.OP_PING)]))
    return bytes(out + tail)


@settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(stream(), st.lists(st.integers(0, 1 << 16), max_size=8))
def test_engines_agree(data: bytes, cuts: list[int]) -> None:
    check_same(split_reads(data, cuts))


@settings(max_examples=100, deadline=None)
@given(st.lists(st.integers(1, 300), min_size=1, max_size=5), st.integers(50, 400))
def test_max_message_agrees(sizes: list[int], limit: int) -> None:
    data = b"".join(frame(b'[{"ev":"T","sym":"AB","x":"' + b"y" * n + b'"}]') for n in sizes)
    check_same([data], max_message=limit)


def routed(payload: bytes, native: bool) -> dict[str, Any]:
    got = drive([frame(payload)], native)
    got["error"] = got["error"] and got["error"][0]  # the text names a column, which differs
    return {k: got[k] for k in ("out", "sizes", "events", "error", "trades", "unroutable")}


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.lists(trade(), min_size=1, max_size=8), st.sampled_from([b", ", b" ,", b",\n"]))
def test_layout_does_not_change_the_outcome(objects: list[bytes], spaced: bytes) -> None:
    """Issue 10 items 4, 5, 8: the same objects, in a compact message (the fast paths) or with
    whitespace between them (the slow path), go to the same pipes, byte for byte, on both engines."""
    compact = b"[" + b",".join(objects) + b"]"
    loose = b"[" + spaced.join(objects) + b"]"
    slow = routed(loose, False)
    assert routed(compact, False) == slow
    assert routed(compact, True) == slow
    assert routed(loose, True) == slow


def _pipe_of(out: dict[int, bytes], obj: bytes) -> list[int]:
    return [p for p, data in out.items() if obj in data]


@pytest.mark.parametrize("native", [False, True])
@pytest.mark.parametrize("sep", [b",", b", "])
def test_escaped_quote_key_does_not_fool_the_fast_path(native: bool, sep: bytes) -> None:
    """Issue 10 item 4: routed by the real sym (AAPL), not by the key ending in \"sym."""
    first = b'{"ev":"T","sym":"MSFT","p":1}'
    tricky = b'{"evabcde\\"sym":"XYZ","sym":"AAPL","p":2}'
    out = routed(b"[" + first + sep + tricky + b"]", native)["out"]
    assert _pipe_of(out, tricky) == [pipe_for(b"AAPL", NPIPES)] != [pipe_for(b"XYZ", NPIPES)]


@pytest.mark.parametrize("native", [False, True])
@pytest.mark.parametrize("sep", [b",", b", "])
def test_duplicate_sym_first_key_wins(native: bool, sep: bytes) -> None:
    """Issue 10 item 5: as the C original, on every path."""
    dup = b'{"ev":"T","sym":"AAPL","sym":"XYZ","p":2}'
    out = routed(b'[{"ev":"T","sym":"MSFT","p":1}' + sep + dup + b"]", native)["out"]
    assert _pipe_of(out, dup) == [pipe_for(b"AAPL", NPIPES)] != [pipe_for(b"XYZ", NPIPES)]


@pytest.mark.parametrize("native", [False, True])
@pytest.mark.parametrize("sep", [b",", b", "])
def test_invalid_utf8_passes_through_on_every_path(native: bool, sep: bytes) -> None:
    """Issue 10 item 8: byte-identical, never badjson, whatever the layout."""
    bad = b'{"ev":"T","sym":"AAPL","c":"\xff\xfe"}'
    badsym = b'{"ev":"T","sym":"\xc3Z","p":3}'
    got = routed(b'[{"ev":"T","sym":"MSFT","p":1}' + sep + bad + sep + badsym + b"]", native)
    assert got["error"] is None and got["trades"] == 3
    assert _pipe_of(got["out"], bad) == [pipe_for(b"AAPL", NPIPES)]
    assert _pipe_of(got["out"], badsym) == [pipe_for(b"\xc3Z", NPIPES)]


def test_native_takes_compact_frames() -> None:
    payload = b'[{"ev":"T","sym":"AAPL","p":1},{"ev":"T","sym":"MSFT","p":2}]'
    decoder = FrameDecoder()
    decoder.feed(frame(payload) * 3 + frame(b"x", frames.OP_PING))
    router = Router(NPIPES)
    assert engine.NativeEngine(NPIPES).run(decoder, router) == (3, 6)
    assert router.trades == 6
    assert len(decoder.events()) == 1  # the ping is left to Python
    assert check_same([frame(payload) * 3])["trades"] == 6


def test_long_trades_keep_resync_sizes() -> None:
    payload = b'[{"ev":"T","sym":"A","x":"' + b"z" * 400 + b'"}]'
    assert check_same([frame(payload, frames.OP_BINARY) * 2])["sizes"]


def test_choose() -> None:
    assert engine.choose("python") == "python"
    assert engine.choose("auto") == "native"
    assert engine.choose("native") == "native"


def test_native_unavailable_is_an_error(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(engine, "_speedups", None)
    assert engine.choose("auto") == "python"
    with pytest.raises(engine.EngineUnavailable):
        engine.choose("native")

import json
import random
import struct

import orjson
import pytest

from balancer import router as router_module
from balancer.router import Router, RouterError, RouteResult, fnv1a_64, object_spans, pipe_for

KNOWN = {b"AAPL": 0x89106B8B, b"MSFT": 0xE4BF0DAF, b"SPY": 0x97FC9619, b"TSLA": 0x65D990FA,
         b"BRK.A": 0x8B33AB78}
PIPES_31 = {b"AAPL": 26, b"MSFT": 0, b"SPY": 22, b"TSLA": 11, b"BRK.A": 1}


@pytest.mark.parametrize("symbol", sorted(KNOWN))
def test_known_hashes(symbol):
    assert fnv1a_64(symbol) >> 32 == KNOWN[symbol]
    assert pipe_for(symbol, 31) == PIPES_31[symbol]


def test_fnv_reference_vectors():
    # Published FNV-1a 64-bit test vectors (Fowler/Noll/Vo).
    assert fnv1a_64(b"") == 0xCBF29CE484222325
    assert fnv1a_64(b"a") == 0xAF63DC4C8601EC8C
    assert fnv1a_64(b"foobar") == 0x85944171F73967E8


def trade(sym, q, **extra):
    obj = {"ev": "T", "sym": sym, "x": 4, "i": "12345", "z": 3, "p": 114.125, "s": 100, "c": [0, 12],
           "t": 1536036818784, "q": q, **extra}
    return json.dumps(obj, separators=(",", ":")).encode()


def reference(payloads, npipes):
    """What each pipe must get, computed with a JSON parser and the span scanner."""
    out = [bytearray() for _ in range(npipes)]
    for payload in payloads:
        for obj, (a, b) in zip(orjson.loads(payload), object_spans(payload), strict=True):
            if isinstance(obj.get("sym"), str):
                out[pipe_for(obj["sym"].encode(), npipes)] += struct.pack("<I", b - a) + payload[a:b]
    return [bytes(b) for b in out]


def run(payloads, npipes=31):
    r = Router(npipes)
    result = RouteResult()
    for p in payloads:
        r.route(p, result)
    got = [bytearray() for _ in range(npipes)]
    for pipe, chunks in r.take():
        for chunk in chunks:
            got[pipe] += chunk.data
            # the recorded sizes add up to the chunk
            assert sum(n + chunk.overhead for n in chunk.lens) == len(chunk.data)
    return r, result, [bytes(b) for b in got]


def arr(*objs):
    return b"[" + b",".join(objs) + b"]"


def test_fast_path_byte_identical_and_ordered():
    rng = random.Random(3)
    syms = ["AAPL", "MSFT", "SPY", "TSLA", "BRK.A", "A", "ZVZZT", "GOOGL", "QQQ"]
    payloads = [arr(*(trade(rng.choice(syms), q * 100 + i) for i in range(100))) for q in range(30)]
    r, result, got = run(payloads)
    assert got == reference(payloads, 31)
    assert r.trades == 3000 and r.slow_messages == 0
    assert not result.statuses


def test_single_trade_message():
    payload = arr(trade("AAPL", 1))
    r, _, got = run([payload])
    assert got[26] == struct.pack("<I", len(payload) - 2) + payload[1:-1]
    assert r.slow_messages == 0


def test_minimal_trade_object():
    payload = b'[{"ev":"T","sym":"A"},{"ev":"T","sym":""}]'
    _r, _, got = run([payload], 7)
    assert got == reference([payload], 7)


@pytest.mark.parametrize("sym", ["ABCDEFG", "ABCDEFGH", "VERYLONGSYMBOL.WS.A", "X" * 200])
def test_long_symbols_route_exactly(sym):
    payloads = [arr(trade("AAPL", 1), trade(sym, 2), trade("MSFT", 3), trade(sym, 4))]
    r, _, got = run(payloads, 13)
    assert got == reference(payloads, 13)
    assert r.slow_messages == 0 and r.trades == 4


def test_escaped_symbol_goes_slow_and_is_decoded():
    payload = b'[{"ev":"T","sym":"AA\\u0050L","q":1},{"ev":"T","sym":"MSFT","q":2}]'
    r, _, got = run([payload], 31)
    assert got == reference([payload], 31)
    assert got[PIPES_31[b"AAPL"]]  # hashed on the decoded symbol
    assert r.slow_messages == 1


@pytest.mark.parametrize(
    "payload",
    [
        b'[{"ev":"T", "sym":"AAPL","q":1}]',  # spacing
        b'[ {"ev":"T","sym":"AAPL","q":1} ]',
        b'[{"sym":"AAPL","ev":"T","q":1}]',  # field order
        b'[{"ev":"Q","sym":"AAPL","q":1}]',  # another event type
        b'[{"ev":"T","sym":"AAPL","i":"{","q":1}]',  # a brace in a string
        b'[{"ev":"T","sym":"AAPL","o":{"a":1}},{"ev":"T","sym":"SPY"}]',  # nested object
        # a nested array of objects that contains the exact separator: must not be split there
        b'[{"ev":"T","sym":"AAPL","n":[{"a":1},{"ev":"T","sym":"SPY"}]},{"ev":"T","sym":"TSLA"}]',
        b'[{"ev":"T","sym":"AAPL","s":"\\"},{\\"ev\\":\\"T\\",\\"sym\\":\\"SPY"}]',
        b'[\n{"ev":"T","sym":"AAPL"}\n]',
    ],
)
def test_slow_path_is_exact(payload):
    r, _, got = run([payload], 31)
    assert got == reference([payload], 31)
    assert r.slow_messages == 1


def test_other_one_letter_events_in_the_same_layout_route_exactly():
    payload = b'[{"ev":"T","sym":"AAPL","q":1},{"ev":"Q","sym":"MSFT","bp":1.5}]'
    r, _, got = run([payload], 31)
    assert got == reference([payload], 31)
    assert r.trades == 2


def test_closing_brace_in_a_string_is_harmless_on_the_fast_path():
    payload = b'[{"ev":"T","sym":"AAPL","i":"}","q":1},{"ev":"T","sym":"SPY","i":"},{","q":2}]'
    _, _, got = run([payload], 31)
    assert got == reference([payload], 31)


def test_order_kept_across_fast_and_slow_paths_in_one_pipe():
    payloads = [arr(trade("AAPL", 1)), b'[{"sym":"AAPL","ev":"T","q":2}]', arr(trade("AAPL", 3)),
                b'[{"ev":"T","sym":"AAPL","q":4,"o":{"x":1}}]', arr(trade("AAPL", 5), trade("AAPL", 6))]
    _, _, got = run(payloads, 31)
    pipe = got[PIPES_31[b"AAPL"]]
    qs = []
    while pipe:
        n = struct.unpack("<I", pipe[:4])[0]
        qs.append(orjson.loads(pipe[4 : 4 + n])["q"])
        pipe = pipe[4 + n :]
    assert qs == [1, 2, 3, 4, 5, 6]


def test_status_events_are_returned_not_routed():
    payload = b'[{"ev":"status","status":"auth_success","message":"authenticated"}]'
    r, result, got = run([payload])
    assert result.statuses == [{"ev": "status", "status": "auth_success", "message": "authenticated"}]
    assert not any(got) and r.trades == 0 and r.slow_messages == 0


def test_mixed_status_and_trades():
    payload = b'[{"ev":"status","status":"x"},{"ev":"T","sym":"AAPL","q":1}]'
    _r, result, got = run([payload])
    assert len(result.statuses) == 1 and got == reference([payload], 31)


def test_objects_without_sym_are_counted_and_reported():
    payload = b'[{"ev":"T","q":1},{"ev":"T","sym":"AAPL"}]'
    r, result, _ = run([payload])
    assert r.unroutable == 1 and result.unroutable == [b'{"ev":"T","q":1}'] and r.trades == 1


@pytest.mark.parametrize(
    "payload",
    [b"not json", b'{"ev":"T","sym":"AAPL"}', b"[1,2]", b'[{"ev":"T","sym":"AAPL"},3]',
     b'[{"ev":"T","sym":"AAPL","p":1', b'[{"ev":"T","sym":"AAPL}]', b"", b"[]]"],
)
def test_not_an_array_of_objects(payload):
    with pytest.raises(RouterError):
        Router(4).route(payload, RouteResult())


def test_messages_before_a_bad_one_stay_routed():
    r = Router(4)
    result = RouteResult()
    r.route(arr(trade("AAPL", 1)), result)
    with pytest.raises(RouterError):
        r.route(b"garbage", result)
    batches = r.take()
    assert sum(len(c.lens) for _, chunks in batches for c in chunks) == 1


def test_cache_limit_keeps_routing_exact(monkeypatch):
    monkeypatch.setattr(router_module, "CACHE_LIMIT", 5)
    syms = [f"S{i}" for i in range(40)]
    payloads = [arr(*(trade(s, i) for i, s in enumerate(syms))) for _ in range(3)]
    _, _, got = run(payloads, 17)
    assert got == reference(payloads, 17)


def test_object_spans_string_aware():
    payload = b'[{"a":"}{[","b":{"c":[1,{"d":2}]}},{"e":"\\"}"}]'
    spans = object_spans(payload)
    assert [payload[a:b] for a, b in spans] == [b'{"a":"}{[","b":{"c":[1,{"d":2}]}}', b'{"e":"\\"}"}']


def _pipes(r):
    got = [bytearray() for _ in range(r.npipes)]
    for pipe, chunks in r.take():
        for chunk in chunks:
            got[pipe] += chunk.data
            assert sum(n + chunk.overhead for n in chunk.lens) == len(chunk.data)
    return [bytes(b) for b in got]


@pytest.mark.parametrize("seed", range(20))
def test_route_many_is_byte_identical_to_one_by_one(seed):
    rng = random.Random(seed)
    syms = ["AAPL", "SPY", "A", "BRK.B", "ZVZZT", "QQQ", "NVDA"]
    payloads = [arr(*(trade(rng.choice(syms), k * 10 + i) for i in range(rng.randint(1, 4))))
                for k in range(rng.randint(2, 40))]
    r = Router(31)
    assert r.route_many(payloads)
    assert _pipes(r) == reference(payloads, 31)
    assert r.trades == sum(len(orjson.loads(p)) for p in payloads) and r.slow_messages == 0


@pytest.mark.parametrize("odd", [
    arr(trade("A" * 12, 1)),  # a symbol too long for the cache key: resolved one by one
    arr(b'{"ev":"T","sym":"A\\"B","q":1}'),  # escaped quote
    b'[{"ev":"status","status":"success","message":"x"}]',  # a status
    b'[{"ev":"T","sym":"X","n":{"a":1}}]',  # a nested object
    b'[ {"ev":"T","sym":"X"}]',  # whitespace
    b'[{"ev":"T","sym":"X","s":"}][{\\"ev\\":\\"T\\",\\"sym\\":\\""}]',  # a junction inside a string
])
def test_route_many_routes_nothing_when_one_message_is_odd(odd):
    payloads = [arr(trade("AAPL", 1)), odd, arr(trade("SPY", 2), trade("A", 3))]
    r = Router(31)
    assert not r.route_many(payloads)
    assert r.trades == 0 and not any(_pipes(r))
    result = RouteResult()
    for p in payloads:  # and one by one, as the session then does, the router is as new
        r.route(p, result)
    fresh, _, got = run(payloads)
    assert _pipes(r) == got and r.trades == fresh.trades and r.slow_messages == fresh.slow_messages

"""The synthetic market: determinism, Polygon's layout, q per symbol, valid prices, batches."""

from __future__ import annotations

import re

import orjson
import pytest

from simulator.batches import group_trades
from simulator.market import (
    PRICE_SCALE,
    SyntheticMarket,
    format_price,
    price_tick,
)
from simulator.symbols import POPULAR, universe

LAYOUT = re.compile(
    rb'\{"ev":"T","sym":"[A-Z]{1,5}(?:\.[A-Z])?","x":\d+,"i":"\d+","z":[123],'
    rb'"p":\d+(?:\.\d{1,4})?,"s":\d+,(?:"c":\[\d+(?:,\d+)*\],)?"t":\d{13},"q":\d+'
    rb'(?:,"trfi":20[123],"trft":\d{13})?\}')
KEYS = ["ev", "sym", "x", "i", "z", "p", "s", "c", "t", "q", "trfi", "trft"]
T0 = 1_735_828_200_000


def market(seed: int = 1, batch: int = 100, tape: int = 2000, symbols: int = 300,
           stamped: bool = False) -> SyntheticMarket:
    return SyntheticMarket(universe(symbols), seed, batch, tape, stamped)


def frames(m: SyntheticMarket, n: int, stamp: bytes | None = None) -> list[bytes]:
    out = []
    for k in range(n):
        batch = m.next_batch(T0 + k)
        out.append(batch.render(stamp))
    return out


def test_same_seed_same_bytes_other_seed_other_bytes() -> None:
    a, b, c = frames(market(7), 50), frames(market(7), 50), frames(market(8), 50)
    assert a == b
    assert a != c


def test_each_trade_has_polygons_exact_layout_and_field_order() -> None:
    for payload in frames(market(3, tape=1000), 30):
        events = orjson.loads(payload)
        pieces = [b"{" + p + b"}" for p in payload[2:-2].split(b"},{")]
        assert len(pieces) == len(events) == 100
        for piece, event in zip(pieces, events, strict=True):
            assert LAYOUT.fullmatch(piece), piece
            assert piece.startswith(b'{"ev":"T","sym":"')
            assert list(event) == [k for k in KEYS if k in event]
            assert orjson.dumps(event) == piece  # compact: what a JSON encoder would write


def test_q_is_consecutive_per_symbol_across_laps_of_the_tape() -> None:
    m = market(5, batch=50, tape=500)  # 10 blocks: 60 frames go round the tape 6 times
    seen: dict[str, list[int]] = {}
    for payload in frames(m, 60):
        for event in orjson.loads(payload):
            seen.setdefault(event["sym"], []).append(event["q"])
    assert len(seen) > 20
    for symbol, qs in seen.items():
        assert qs == list(range(qs[0], qs[0] + len(qs))), symbol


def test_t_is_the_frames_time_and_trft_just_before() -> None:
    m = market()
    batch = m.next_batch(T0 + 42)
    for event in orjson.loads(batch.render()):
        assert event["t"] == T0 + 42
        if "trfi" in event:
            assert event["x"] == 4 and event["trft"] == T0 + 41


def test_prices_on_valid_ticks_and_near_their_base() -> None:
    m = market(11, tape=5000, symbols=len(POPULAR))
    bases = {name: price for name, _, price in POPULAR}
    for payload in frames(m, 50):
        for event in orjson.loads(payload):
            units = round(event["p"] * PRICE_SCALE)
            assert units > 0
            if units >= PRICE_SCALE:
                midpoint = event["x"] == 4 and units % 100 == 50
                assert units % 100 == 0 or midpoint, event
            assert 0.5 * bases[event["sym"]] < event["p"] < 1.5 * bases[event["sym"]]


def test_popular_symbols_dominate() -> None:
    counts: dict[str, int] = {}
    for payload in frames(market(2, tape=20000, symbols=8000), 100):
        for event in orjson.loads(payload):
            counts[event["sym"]] = counts.get(event["sym"], 0) + 1
    top = sorted(counts, key=counts.__getitem__, reverse=True)[:5]
    assert "SPY" in top
    assert sum(counts[s] for s in top) > 0.12 * sum(counts.values())


def test_lots_exchanges_conditions() -> None:
    events = [e for p in frames(market(4, tape=4000), 40) for e in orjson.loads(p)]
    odd = [e for e in events if e["s"] < 100]
    assert 0.3 < len(odd) / len(events) < 0.8
    assert all(37 in e["c"] for e in odd)
    assert all(e["s"] % 100 == 0 for e in events if e["s"] >= 100)
    assert {e["x"] for e in events} >= {4, 10, 11, 12}
    assert all(e.get("c", []) == sorted(e.get("c", [])) for e in events)
    assert {e["z"] for e in events} == {1, 2, 3}


@pytest.mark.parametrize("stamped", [False, True])
def test_groups_match_a_plain_per_trade_grouping(stamped: bool) -> None:
    m = market(9, batch=200, tape=1000, stamped=stamped)
    for k in range(12):
        batch = m.next_batch(T0 + k)
        batch.render(b"123456789012" if stamped else None)
        trades = batch.trades()
        assert group_trades(trades) == batch.groups()


def test_stamp_goes_into_every_i() -> None:
    m = market(stamped=True)
    events = orjson.loads(m.next_batch(T0).render(b"987654321"))
    assert {e["i"] for e in events} == {"987654321"}


def test_a_short_last_batch() -> None:
    m = market(batch=100)
    m.next_batch(T0)
    batch = m.next_batch(T0, count=7)
    events = orjson.loads(batch.render())
    assert batch.count == len(events) == 7
    assert sum(batch.groups().sizes) == 7


@pytest.mark.parametrize(("units", "text"), [
    (1_141_250, b"114.125"), (520_000, b"52"), (512, b"0.0512"), (1, b"0.0001"),
    (10_000, b"1"), (6_201_500_000, b"620150"), (1_234_500, b"123.45"),
])
def test_format_price(units: int, text: bytes) -> None:
    assert format_price(units) == text
    assert orjson.loads(text) == units / PRICE_SCALE


def test_tick_sizes() -> None:
    assert price_tick(PRICE_SCALE) == 100 and price_tick(PRICE_SCALE - 1) == 1


def test_universe_is_stable_and_ordered() -> None:
    names = [s.name for s in universe(8000)]
    assert len(set(names)) == 8000 and names[:5] == ["SPY", "QQQ", "TSLA", "NVDA", "AAPL"]
    assert [s.name for s in universe(100)] == names[:100]
    weights = [s.weight for s in universe(100)]
    assert weights == sorted(weights, reverse=True)

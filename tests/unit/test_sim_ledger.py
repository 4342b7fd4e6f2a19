"""The ledger: per-symbol books, CRC-32 combination, the run-wide fold, the JSON written."""

from __future__ import annotations

import json
import os
import random
import zlib
from pathlib import Path

import pytest

from simulator.batches import TradeListBatch, Trades, group_trades
from simulator.crc import crc32_combine, crc32_shift
from simulator.ledger import RunLedger, SymbolBook
from simulator.market import SyntheticMarket
from simulator.symbols import universe

CHECK_INPUT = b"123456789"
CHECK_VALUE = 0xCBF43926  # the published CRC-32 check value (IEEE 802.3, zlib)


def test_zlib_is_the_crc_of_the_contract() -> None:
    assert zlib.crc32(CHECK_INPUT) == CHECK_VALUE


@pytest.mark.parametrize("cut", range(10))
def test_combine_reproduces_the_check_value(cut: int) -> None:
    a, b = CHECK_INPUT[:cut], CHECK_INPUT[cut:]
    assert crc32_combine(zlib.crc32(a), zlib.crc32(b), len(b)) == CHECK_VALUE


def test_combine_on_random_lengths() -> None:
    rng = random.Random(3)
    for _ in range(40):
        a = rng.randbytes(rng.randrange(0, 3000))
        b = rng.randbytes(rng.choice([0, 1, 7, 64, 1000, 65537]))
        assert crc32_combine(zlib.crc32(a), zlib.crc32(b), len(b)) == zlib.crc32(a + b)
    assert crc32_shift(0, 10**12) == 0


def naive(payload_lists: list[Trades]) -> dict[str, dict[str, int]]:
    out: dict[str, dict[str, int]] = {}
    for trades in payload_lists:
        for symbol, payload, q in zip(trades.symbols, trades.payloads, trades.qs, strict=True):
            entry = out.setdefault(symbol, {"count": 0, "first_q": q, "last_q": q, "crc32": 0})
            entry["count"] += 1
            entry["last_q"] = q
            entry["crc32"] = zlib.crc32(payload, entry["crc32"])
    return dict(sorted(out.items()))


def test_book_equals_a_trade_by_trade_reckoning() -> None:
    market = SyntheticMarket(universe(200), 1, 100, 1000)
    book, seen = SymbolBook(), []
    for k in range(25):
        batch = market.next_batch(1_700_000_000_000 + k)
        batch.render()
        book.add(batch.groups())
        seen.append(batch.trades())
    assert book.to_json() == naive(seen)


def trades_of(symbols: str, start_q: int) -> Trades:
    payloads = [b'{"ev":"T","sym":"%s","q":%d}' % (s.encode(), start_q + i)
                for i, s in enumerate(symbols)]
    return Trades(list(symbols), payloads, [start_q + i for i in range(len(symbols))])


def test_run_wide_book_is_the_connections_appended_in_order(tmp_path: Path) -> None:
    ledger = RunLedger(seed=5, settings={"rate": 1})
    first, second = ledger.open_connection("a"), ledger.open_connection("b")
    batches = [trades_of("ABAC", 1), trades_of("BCA", 10), trades_of("CCA", 20)]
    ledger.confirm(first, TradeListBatch(batches[0]))
    ledger.confirm(second, TradeListBatch(batches[1]))
    ledger.confirm(first, TradeListBatch(batches[2]))
    ledger.partial(second, 4)
    first.end = second.end = 1.0
    expected = naive([batches[0], batches[2], batches[1]])  # connection after connection
    assert ledger.symbols().to_json() == expected
    assert first.symbols.to_json() == naive([batches[0], batches[2]])
    path = tmp_path / "ledger.json"
    ledger.write(str(path))
    data = json.loads(path.read_text())
    assert data["version"] == 1 and data["seed"] == 5 and data["symbols"] == expected
    assert data["totals"] == {"connections": 2, "trades_sent": 10, "frames_sent": 3,
                              "trades_partial": 4, "frames_partial": 1, "faults": {}}
    c = data["connections"][1]
    assert (c["id"], c["peer"], c["trades_sent"], c["trades_partial"]) == (2, "b", 3, 4)
    assert [p for p in os.listdir(tmp_path) if p.startswith(".tmp")] == []


def test_live_connections_count_without_being_folded_for_good() -> None:
    ledger = RunLedger(seed=1, settings={})
    live = ledger.open_connection("a")
    ledger.confirm(live, TradeListBatch(trades_of("AB", 1)))
    assert ledger.symbols().to_json()["A"]["count"] == 1
    ledger.confirm(live, TradeListBatch(trades_of("A", 3)))
    assert ledger.symbols().to_json()["A"] == naive([trades_of("AB", 1), trades_of("A", 3)])["A"]


def test_counts_only_without_per_symbol_books() -> None:
    ledger = RunLedger(seed=1, settings={}, per_symbol=False)
    record = ledger.open_connection("a")
    ledger.confirm(record, TradeListBatch(trades_of("ABC", 1)))
    assert record.trades_sent == 3 and record.symbols.to_json() == {}


def test_group_trades_keeps_first_appearance_order() -> None:
    groups = group_trades(trades_of("BAB", 1))
    assert groups.symbols == ["B", "A"] and groups.sizes == [2, 1]
    assert groups.first_qs == [1, 2] and groups.last_qs == [3, 2]

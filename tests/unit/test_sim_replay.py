"""Replay of lb --record JSON lines and Polygon trade flat files, including malformed ones."""

from __future__ import annotations

import gzip
import json
from pathlib import Path

import orjson
import pytest

from simulator.batches import STAMP_TOKEN
from simulator.replay import ReplayError, ReplaySource, detect_format, read_csv, read_jsonl

HEADER = ("ticker,conditions,correction,exchange,id,participant_timestamp,price,sequence_number,"
          "sip_timestamp,size,tape,trf_id,trf_timestamp")
TRADE = {"ev": "T", "sym": "AAPL", "x": 4, "i": "52983525029461", "z": 3, "p": 114.125, "s": 100,
         "c": [12, 37], "t": 1536036818784, "q": 3681328}


def write(path: Path, text: str, gz: bool = False) -> str:
    if gz:
        with gzip.open(path, "wt") as f:
            f.write(text)
    else:
        path.write_text(text)
    return str(path)


def jsonl(*messages: object) -> str:
    return "".join(json.dumps(m, separators=(",", ":")) + "\n" for m in messages)


@pytest.mark.parametrize("gz", [False, True])
def test_jsonl_payloads_become_trades_byte_for_byte(tmp_path: Path, gz: bool) -> None:
    second = dict(TRADE, sym="MSFT", q=5, t=1536036818790)
    status = {"ev": "status", "status": "success", "message": "subscribed to: T.*"}
    path = write(tmp_path / "rec.jsonl", jsonl([TRADE, status], [second], second | {"q": 6}), gz)
    trades = list(read_jsonl(path))
    assert [(t.symbol, t.q) for t in trades] == [("AAPL", 3681328), ("MSFT", 5), ("MSFT", 6)]
    source = ReplaySource(path)
    batch = source.next_batch(10)
    assert batch is not None and batch.count == 3
    assert orjson.loads(batch.render()) == [TRADE, second, second | {"q": 6}]
    assert batch.trades().payloads[0] == orjson.dumps(TRADE)
    assert source.next_batch(10) is None and source.exhausted


def test_csv_flat_file_converts_to_websocket_layout(tmp_path: Path) -> None:
    rows = [
        "AAPL,\"12,37\",0,4,52983525029461,1536036818784000000,114.125,3681328,1536036818784123456,"
        "100,3,202,1536036818783999999",
        "MSFT,,0,11,7,1,420.5,17,1536036818790000000,5,3,,",
    ]
    path = write(tmp_path / "flat.csv", HEADER + "\n" + "\n".join(rows) + "\n")
    assert detect_format(path) == "csv"
    trades = list(read_csv(path))
    assert [list(t.fields) for t in trades] == [
        ["ev", "sym", "x", "i", "z", "p", "s", "c", "t", "q", "trfi", "trft"],
        ["ev", "sym", "x", "i", "z", "p", "s", "t", "q"]]
    assert trades[0].fields == TRADE | {"trfi": 202, "trft": 1536036818783}
    assert orjson.dumps(trades[1].fields) == (
        b'{"ev":"T","sym":"MSFT","x":11,"i":"7","z":3,"p":420.5,"s":5,"t":1536036818790,"q":17}')


def test_csv_gzip_by_content_not_name(tmp_path: Path) -> None:
    row = "SPY,,0,11,1,1,500,1,1700000000000000000,100,2,,"
    path = write(tmp_path / "trades.bin", HEADER + "\n" + row + "\n", gz=True)
    assert detect_format(path) == "csv"
    assert [t.symbol for t in read_csv(path)] == ["SPY"]


@pytest.mark.parametrize(("content", "message"), [
    (jsonl([TRADE]) + "{not json\n", r"rec.jsonl:2: not JSON"),
    (jsonl([TRADE], [dict(TRADE, q="7")]), r"rec.jsonl:2: trade AAPL without an integer 'q'"),
    ("\n" + jsonl([{"ev": "T", "q": 1, "t": 2}]), r"rec.jsonl:2: trade without a string 'sym'"),
    (jsonl([TRADE], [TRADE], [dict(TRADE, t=None)]), r"rec.jsonl:3: .*integer 't'"),
    (jsonl(["x"]), r"rec.jsonl:1: expected a JSON object"),
])
def test_malformed_jsonl_names_the_line(tmp_path: Path, content: str, message: str) -> None:
    path = write(tmp_path / "rec.jsonl", content)
    with pytest.raises(ReplayError, match=message):
        list(read_jsonl(path))


@pytest.mark.parametrize(("rows", "message"), [
    (["AAPL,,0,x,1,1,1.5,1,1,1,1,,"], r"flat.csv:2: exchange is not an integer: 'x'"),
    (["AAPL,,0,4,1,1,1.5,1,1,1,1,,", "MSFT,,0,4,1,1,abc,1,1,1,1,,"],
     r"flat.csv:3: price is not a number: 'abc'"),
    (["AAPL,,0,4,1,1,1.5,1,1,1"], r"flat.csv:2: 10 fields, the header has 13"),
    ([",,0,4,1,1,1.5,1,1,1,1,,"], r"flat.csv:2: empty ticker"),
    (["AAPL,\"1,x\",0,4,1,1,1.5,1,1,1,1,,"], r"flat.csv:2: conditions are not integers"),
    (["AAPL,,0,4,1,1,1.5,,1,1,1,,"], r"flat.csv:2: empty sequence_number"),
])
def test_malformed_csv_names_the_line(tmp_path: Path, rows: list[str], message: str) -> None:
    path = write(tmp_path / "flat.csv", HEADER + "\n" + "\n".join(rows) + "\n")
    with pytest.raises(ReplayError, match=message):
        list(read_csv(path))


def test_csv_with_a_wrong_header(tmp_path: Path) -> None:
    path = write(tmp_path / "flat.csv", "ticker,price\nAAPL,1\n")
    with pytest.raises(ReplayError, match=r"flat.csv:1: not a trades flat-file header: missing"):
        list(read_csv(path))


def test_loop_keeps_q_and_t_rising(tmp_path: Path) -> None:
    a = dict(TRADE, q=10, t=1000)
    b = dict(TRADE, q=12, t=1500)
    path = write(tmp_path / "rec.jsonl", jsonl([a, b]))
    source = ReplaySource(path, loop=True)
    events = []
    for _ in range(3):
        batch = source.next_batch(2)
        assert batch is not None
        events += orjson.loads(batch.render())
    assert [(e["q"], e["t"]) for e in events] == [(10, 1000), (12, 1500), (23, 1501), (25, 2001),
                                                  (36, 2002), (38, 2502)]


def test_until_t_takes_only_what_is_due(tmp_path: Path) -> None:
    path = write(tmp_path / "rec.jsonl", jsonl(*[[dict(TRADE, q=i, t=100 + i)] for i in range(10)]))
    source = ReplaySource(path)
    assert source.peek_t() == 100
    batch = source.next_batch(100, until_t=104)
    assert batch is not None and batch.count == 5
    assert source.next_batch(100, until_t=104) is None
    assert source.peek_t() == 105


def test_stamped_replay_puts_the_stamp_in_i(tmp_path: Path) -> None:
    path = write(tmp_path / "rec.jsonl", jsonl([TRADE, dict(TRADE, q=1)]))
    batch = ReplaySource(path, stamped=True).next_batch(10)
    assert batch is not None
    assert all(STAMP_TOKEN in p for p in batch.trades().payloads)
    events = orjson.loads(batch.render(b"4242"))
    assert [e["i"] for e in events] == ["4242", "4242"]
    assert all(b'"i":"4242"' in p for p in batch.trades().payloads)


def test_trades_before_a_bad_line_still_come_out(tmp_path: Path) -> None:
    path = write(tmp_path / "rec.jsonl", jsonl([TRADE], [dict(TRADE, q=2)]) + "oops\n")
    source = ReplaySource(path)
    batch = source.next_batch(10)
    assert batch is not None and batch.count == 2
    with pytest.raises(ReplayError, match=r"rec.jsonl:3: not JSON"):
        source.next_batch(10)
    with pytest.raises(ReplayError, match=r"rec.jsonl:3"):
        source.peek_t()

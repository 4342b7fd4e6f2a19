"""The pure pipe-protocol layer and the routing hash, with bytes and published vectors."""

from __future__ import annotations

import struct

import pytest

from workers.framing import (
    find_chain_start,
    frame,
    frame_all,
    split_frames,
)
from workers.routing import PipeOfSymbol, fnv1a_64, pipe_for_symbol

TRADES = [
    b'{"ev":"T","sym":"AAPL","p":1.5,"s":100,"q":1}',
    b'{"ev":"T","sym":"MSFT","p":2.25,"s":5,"q":7}',
    b"{}",
    b'{"ev":"T","sym":"SPY","p":400.1,"s":1,"q":99999}',
]


def test_frame_is_u32_little_endian_length_then_payload() -> None:
    assert frame(b'{"a":1}') == b"\x07\x00\x00\x00" + b'{"a":1}'
    assert frame(b"") == b"\x00\x00\x00\x00"


def test_split_returns_complete_messages_and_the_partial_start() -> None:
    data = frame_all(TRADES)
    for cut in range(len(data) + 1):
        payloads, stop, bad = split_frames(data, 0, cut)
        assert bad == -1
        assert payloads == TRADES[: len(payloads)]
        assert stop == len(frame_all(payloads))
        if len(payloads) < len(TRADES):
            assert cut - stop < len(frame(TRADES[len(payloads)]))


def test_split_honours_start_and_end() -> None:
    data = b"junk" + frame_all(TRADES) + b"more"
    payloads, stop, bad = split_frames(data, 4, len(data) - 4)
    assert payloads == TRADES and stop == len(data) - 4 and bad == -1


def test_split_stops_at_an_oversized_length_after_the_good_messages() -> None:
    bad_header = struct.pack("<I", 1025)
    data = frame_all(TRADES[:2]) + bad_header + b"x" * 10
    payloads, stop, bad = split_frames(data, 0, len(data), max_message=1024)
    assert payloads == TRADES[:2]
    assert stop == len(frame_all(TRADES[:2]))
    assert bad == 1025


def test_chain_start_finds_the_boundary_after_a_cut_message() -> None:
    data = frame_all(TRADES)
    first = len(frame(TRADES[0]))
    for cut in range(1, first + 1):
        chain = find_chain_start(data[cut:])
        assert chain is not None
        assert chain.offset == first - cut
        assert chain.complete == len(TRADES) - 1


def test_chain_start_accepts_a_last_record_cut_by_the_end() -> None:
    data = frame_all(TRADES[:2]) + frame(TRADES[3])[:9]
    chain = find_chain_start(data[5:])
    assert chain is not None
    assert chain.offset == len(frame(TRADES[0])) - 5
    assert chain.complete == 1


def test_chain_start_rejects_garbage() -> None:
    # only the last 3 bytes could still be the start of a header
    assert find_chain_start(b"\xff" * 64) == (61, 0)
    empties = b"\x00\x00\x00\x00{}" * 3  # length 0 is never a JSON object
    assert find_chain_start(empties) == (len(empties) - 3, 0)
    chain = find_chain_start(b'"p":1.5,"s":100}' + frame(TRADES[1]))
    assert chain is not None and chain.offset == 16 and chain.complete == 1


def test_fnv1a_64_published_vectors() -> None:
    # FNV-1a 64 reference values (Fowler/Noll/Vo test suite)
    assert fnv1a_64(b"") == 0xCBF29CE484222325
    assert fnv1a_64(b"a") == 0xAF63DC4C8601EC8C
    assert fnv1a_64(b"foobar") == 0x85944171F73967E8


@pytest.mark.parametrize(
    ("symbol", "high", "pipe31"),
    [
        ("AAPL", 0x89106B8B, 26),
        ("MSFT", 0xE4BF0DAF, 0),
        ("SPY", 0x97FC9619, 22),
        ("TSLA", 0x65D990FA, 11),
        ("BRK.A", 0x8B33AB78, 1),
    ],
)
def test_routing_matches_the_contract(symbol: str, high: int, pipe31: int) -> None:
    assert fnv1a_64(symbol.encode()) >> 32 == high
    assert pipe_for_symbol(symbol, 31) == pipe31
    cache = PipeOfSymbol(31)
    assert cache[symbol] == pipe31 and symbol in cache

"""Differential tests: lb-bridge's compiled batch cut (workers/_jscut.c) against the pure-Python
one it copies (workers.jsproto.cut_batch_counted_py): the same (bytes, messages) or the same
exception, type and text, for any bytes and any Python ints."""

from __future__ import annotations

import ctypes
import os
from collections.abc import Callable
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from workers import jsproto
from workers.framing import frame_all

REQUIRED = bool(os.environ.get("LB_REQUIRE_NATIVE"))
needs_native = pytest.mark.skipif(
    not jsproto.NATIVE_CUT and not REQUIRED, reason="workers._jscut is not built"
)

Cut = Callable[[Any, int, int], tuple[int, int]]


def native() -> Cut:
    assert jsproto._jscut is not None, "workers._jscut did not import"
    return jsproto._jscut.cut_batch_counted


def outcome(cut: Cut, data: Any, max_batch: int, max_message: int) -> tuple[Any, ...]:
    try:
        return ("ok", cut(data, max_batch, max_message))
    except Exception as exc:
        return ("raised", type(exc), str(exc))


def agree(data: Any, max_batch: int, max_message: int) -> tuple[Any, ...]:
    expected = outcome(jsproto.cut_batch_counted_py, data, max_batch, max_message)
    assert outcome(native(), data, max_batch, max_message) == expected, (bytes(data)[:64], max_batch,
                                                                         max_message)
    return expected


def test_native_is_loaded_when_required() -> None:
    if not REQUIRED:
        pytest.skip("LB_REQUIRE_NATIVE is not set")
    assert jsproto.NATIVE_CUT, "LB_REQUIRE_NATIVE is set but workers._jscut did not import"
    assert jsproto.cut_batch_counted is jsproto._jscut.cut_batch_counted
    if os.environ.get("LB_JSCUT"):
        assert os.path.samefile(jsproto._jscut.__file__, os.environ["LB_JSCUT"])


# -- random inputs ---------------------------------------------------------------------------

LIMITS = st.one_of(
    st.integers(-8, 2000),
    st.integers(-(2**70), 2**70),
    st.sampled_from([0, -1, 4, 2**31, 2**32 - 1, 2**32, 2**63 - 1, 2**63, 2**64, 2**64 + 1, -(2**63),
                     -(2**63) - 1, 10**30, -(10**30)]),
)


def exact(data: bytes) -> ctypes.Array[ctypes.c_char]:
    """A buffer of exactly len(data) bytes, for more than 16 a malloc block of its own (no NUL
    after it as bytes and bytearray have, no slack as array has): under ci/sanitize.sh
    (PYTHONMALLOC=malloc) AddressSanitizer sees a read even one byte past its end."""
    buf = ctypes.create_string_buffer(len(data))
    buf.raw = data
    return buf


@st.composite
def pipe_bytes(draw: st.DrawFn) -> bytes:
    """Whole messages of 0..300 bytes, some with a false (huge) length, a cut tail, or garbage."""
    if draw(st.integers(0, 9)) == 0:
        return draw(st.binary(max_size=64))
    out = bytearray()
    for size in draw(st.lists(st.integers(0, 300), max_size=12)):
        payload = draw(st.binary(min_size=size, max_size=size)) if size < 16 else bytes([size % 251]) * size
        length = size
        if draw(st.integers(0, 15)) == 0:
            length = draw(st.sampled_from([size + 1, 2**31, 2**32 - 1, 0x01000000]))
        out += length.to_bytes(4, "little") + payload
    cut = draw(st.integers(0, 6))
    if cut and out:
        out = out[: len(out) - draw(st.integers(1, min(len(out), 305)))]
    return bytes(out + draw(st.sampled_from([b"", b"", b"\x01", b"\x00\x00\x00", b"\xff\xff\xff\xff"])))


@needs_native
@settings(max_examples=3000, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(pipe_bytes(), LIMITS, LIMITS)
def test_native_agrees_with_pure(data: bytes, max_batch: int, max_message: int) -> None:
    agree(data, max_batch, max_message)


@needs_native
@settings(max_examples=1500, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(pipe_bytes(), st.integers(0, 400), st.integers(0, 320), st.integers(0, 8), st.integers(0, 8))
def test_native_agrees_near_the_bounds(data: bytes, max_batch: int, max_message: int, start: int,
                                       trim: int) -> None:
    """Limits around the message sizes, and every kind of buffer, a slice of a memoryview too."""
    expected = agree(data, max_batch, max_message)
    assert outcome(native(), bytearray(data), max_batch, max_message) == expected
    assert outcome(native(), memoryview(data), max_batch, max_message) == expected
    assert outcome(native(), exact(data), max_batch, max_message) == expected
    padded = memoryview(bytes(start) + data + bytes(trim))[start : start + len(data)]
    assert outcome(native(), padded, max_batch, max_message) == expected
    agree(padded[: max(0, len(data) - trim)], max_batch, max_message)


# -- exact vectors, both implementations --------------------------------------------------------

PAYLOADS = [b'{"ev":"T","sym":"AAPL","q":%d}' % i for i in range(10)]
DATA = frame_all(PAYLOADS)
SIZE = len(DATA) // len(PAYLOADS)
BIG = 1 << 20


@pytest.fixture(params=["pure", pytest.param("native", marks=needs_native)])
def cut(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> Cut:
    """One implementation, also made the one cut_batch and complete_prefix go through."""
    impl = jsproto.cut_batch_counted_py if request.param == "pure" else native()
    monkeypatch.setattr(jsproto, "cut_batch_counted", impl)
    return impl


@pytest.mark.parametrize(("data", "max_batch", "max_message", "expected"), [
    (b"", 100, 100, (0, 0)),
    (b"", -1, -1, (0, 0)),
    (b"\x00\x00\x00", 100, 100, (0, 0)),
    (b"\x00\x00\x00\x00", 100, 100, (4, 1)),  # an empty payload is a message
    (b"\x00\x00\x00\x00", 0, 100, (4, 1)),  # bigger than the batch: alone
    (b"\x00\x00\x00\x00", -(2**70), 2**70, (4, 1)),
    (DATA, 3 * SIZE, BIG, (3 * SIZE, 3)),
    (DATA, 3 * SIZE + 5, BIG, (3 * SIZE, 3)),  # never inside a message
    (DATA, 3 * SIZE - 1, BIG, (2 * SIZE, 2)),
    (DATA, 1, BIG, (SIZE, 1)),  # a message bigger than the batch goes alone
    (DATA, 0, BIG, (SIZE, 1)),
    (DATA, -5, BIG, (SIZE, 1)),
    (DATA, BIG, BIG, (len(DATA), 10)),
    (DATA, 2**64, 2**64, (len(DATA), 10)),
    (DATA[:-1], BIG, BIG, (len(DATA) - SIZE, 9)),  # a partial last one waits
    (DATA[:3], BIG, BIG, (0, 0)),
    (DATA[: SIZE - 1], 0, BIG, (0, 0)),  # a first message bigger than the batch but not all here
    (DATA, BIG, SIZE - 4, (len(DATA), 10)),  # max_message is the payload's bound, inclusive
    # a later oversized one stops the batch before it
    (DATA + (SIZE - 3).to_bytes(4, "little") + bytes(SIZE - 3), BIG, SIZE - 4, (len(DATA), 10)),
    (DATA + b"\xff\xff\xff\xff", BIG, 2**32 - 2, (len(DATA), 10)),
    (DATA + bytes(4), BIG, BIG, (len(DATA) + 4, 11)),  # ends with a header: read to the last byte
])
def test_exact_vectors(cut: Cut, data: bytes, max_batch: int, max_message: int,
                       expected: tuple[int, int]) -> None:
    assert cut(data, max_batch, max_message) == expected
    assert cut(bytearray(data), max_batch, max_message) == expected
    assert cut(memoryview(b"xy" + data)[2:], max_batch, max_message) == expected
    assert cut(exact(data), max_batch, max_message) == expected


@pytest.mark.parametrize(("data", "max_message", "text"), [
    (b"\xff\xff\xff\x00{}", BIG, "message length 16777215 exceeds 1048576"),
    (b"\xff\xff\xff\xff", 2**32 - 2, "message length 4294967295 exceeds 4294967294"),
    (b"\x01\x00\x00\x00x", 0, "message length 1 exceeds 0"),
    (b"\x00\x00\x00\x00", -1, "message length 0 exceeds -1"),
    (b"\x00\x00\x00\x00", -(2**70), f"message length 0 exceeds {-(2**70)}"),
    (b"\x02\x00\x00\x00", True, "message length 2 exceeds True"),  # format(), as the f-string does
])
def test_oversized_first_message(cut: Cut, data: bytes, max_message: int, text: str) -> None:
    with pytest.raises(ValueError) as info:
        cut(data, BIG, max_message)
    assert str(info.value) == text


def test_cut_batch_and_complete_prefix_go_through_it(cut: Cut) -> None:
    assert jsproto.cut_batch(DATA, 3 * SIZE + 5, BIG) == 3 * SIZE
    assert jsproto.cut_batch(DATA, 1, BIG) == SIZE
    assert jsproto.complete_prefix(DATA[: 2 * SIZE + 7], BIG) == 2 * SIZE
    with pytest.raises(ValueError, match="exceeds"):
        jsproto.complete_prefix(b"\xff\xff\xff\x00{}", BIG)


@needs_native
def test_native_rejects_what_is_not_a_buffer_or_an_int() -> None:
    with pytest.raises(TypeError):
        native()("text", BIG, BIG)
    with pytest.raises(TypeError):
        native()(DATA, 1.5, BIG)
    with pytest.raises(TypeError):
        native()(DATA, BIG, None)
    assert native()(data=DATA, max_batch=SIZE, max_message=BIG) == (SIZE, 1)


@needs_native
def test_native_refuses_buffers_of_wider_items() -> None:
    # the reference takes len() as the byte count, which a buffer of wider items breaks; the
    # bridge only passes bytes, and the compiled cut refuses what the reference would misread
    from array import array

    words = array("I", [4, 0x61616161])
    with pytest.raises(TypeError, match="4-byte items"):
        native()(words, 100, 100)
    with pytest.raises(TypeError, match="4-byte items"):
        native()(memoryview(bytes(8)).cast("I"), 100, 100)
    assert native()(memoryview(words).cast("B"), 100, 100) == (8, 1)

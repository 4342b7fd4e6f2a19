import os
import struct

import pytest

from balancer.frames import (
    MIN_READ,
    AllocationFailed,
    Close,
    FrameDecoder,
    Message,
    Ping,
    Pong,
    ProtocolError,
    encode_close,
    encode_frame,
    mask,
)


def frame(opcode, payload=b"", fin=True, rsv=0, masked=False, length_form=None):
    b0 = (0x80 if fin else 0) | rsv | opcode
    n = len(payload)
    form = length_form or (7 if n < 126 else 16 if n < 65536 else 64)
    mask_bit = 0x80 if masked else 0
    if form == 7:
        head = bytes((b0, mask_bit | n))
    elif form == 16:
        head = bytes((b0, mask_bit | 126)) + struct.pack(">H", n)
    else:
        head = bytes((b0, mask_bit | 127)) + struct.pack(">Q", n)
    if masked:
        return head + b"\0\0\0\0" + payload
    return head + payload


def decode_all(data: bytes, **kw):
    d = FrameDecoder(**kw)
    d.feed(data)
    events = d.events()
    d.check()
    return events


# RFC 6455 section 5.7 examples


def test_rfc_unmasked_text():
    assert decode_all(bytes.fromhex("810548656c6c6f")) == [b"Hello"]


def test_rfc_fragmented_text():
    assert decode_all(bytes.fromhex("010348656c") + bytes.fromhex("80026c6f")) == [b"Hello"]


def test_rfc_unmasked_ping():
    assert decode_all(bytes.fromhex("890548656c6c6f")) == [Ping(b"Hello")]


def test_rfc_masked_encoding():
    assert encode_frame(0x1, b"Hello", key=bytes.fromhex("37fa213d")) == bytes.fromhex(
        "818537fa213d7f9f4d5158")
    assert encode_frame(0xA, b"Hello", key=bytes.fromhex("37fa213d")) == bytes.fromhex(
        "8a8537fa213d7f9f4d5158")


def test_rfc_256_and_64k_binary_headers():
    p256, p64k = os.urandom(256), os.urandom(65536)
    assert decode_all(bytes.fromhex("827e0100") + p256) == [p256]
    assert decode_all(bytes.fromhex("827f0000000000010000") + p64k) == [p64k]


@pytest.mark.parametrize("n", [0, 1, 125, 126, 127, 65535, 65536, 200_000])
def test_every_length_form_and_boundary(n):
    payload = os.urandom(n)
    assert decode_all(frame(0x2, payload)) == [payload]
    assert decode_all(frame(0x1, payload)) == [payload]  # text is not UTF-8 checked


@pytest.mark.parametrize("form", [16, 64])
def test_non_minimal_length_accepted(form):
    assert decode_all(frame(0x1, b"abc", length_form=form)) == [b"abc"]


def test_client_frames_are_masked_and_round_trip():
    for n in (0, 5, 125, 126, 70000):
        payload = os.urandom(n)
        data = encode_frame(0x2, payload)
        assert data[1] & 0x80
        offset = 2 if n < 126 else 4 if n < 65536 else 10
        key = data[offset : offset + 4]
        assert mask(data[offset + 4 :], key) == payload
    keys = {encode_frame(0x1, b"x")[2:6] for _ in range(20)}
    assert len(keys) > 1


def test_split_at_every_byte():
    # every header form (7-bit, 16-bit, 64-bit length) cut at every byte
    stream = (frame(0x1, b'[{"a":1}]') + frame(0x9, b"p") + frame(0x1, b"x" * 300, fin=False)
              + frame(0xA, b"") + frame(0x0, b"y" * 70, length_form=64) + frame(0x2, b"z"))
    expected = [b'[{"a":1}]', Ping(b"p"), Pong(b""), b"x" * 300 + b"y" * 70, b"z"]
    for cut in range(len(stream) + 1):
        d = FrameDecoder()
        d.feed(stream[:cut])
        events = d.events()
        d.feed(stream[cut:])
        events += d.events()
        d.check()
        assert events == expected, cut


def test_byte_by_byte():
    stream = frame(0x1, b"hello") + frame(0x1, b"a" * 200) + frame(0x1, b"b" * 66000)
    d = FrameDecoder()
    events = []
    for i in range(len(stream)):
        d.feed(stream[i : i + 1])
        events += d.events()
    assert events == [b"hello", b"a" * 200, b"b" * 66000]


def test_many_frames_per_read():
    payloads = [os.urandom(i % 300) for i in range(1000)]
    assert decode_all(b"".join(frame(0x2, p) for p in payloads)) == payloads


def test_fragmented_with_interleaved_control_frames():
    stream = (frame(0x1, b"a", fin=False) + frame(0x9, b"1") + frame(0x0, b"b", fin=False)
              + frame(0xA, b"2") + frame(0x9, b"3") + frame(0x0, b"c"))
    assert decode_all(stream) == [Ping(b"1"), Pong(b"2"), Ping(b"3"), b"abc"]


# A typed decoder keeps each data message's opcode (an echo client must answer text with text).


def test_typed_decoder_keeps_opcodes():
    stream = (frame(0x1, b"t") + frame(0x2, b"\xfe") + frame(0x1, b"") + frame(0x2, b"")
              + frame(0x2, b"a", fin=False) + frame(0x9, b"1") + frame(0x0, b"b", fin=False)
              + frame(0x0, b"c") + frame(0x1, b"", fin=False) + frame(0x0, b"") + frame(0x8, b""))
    assert decode_all(stream, typed=True) == [
        Message(0x1, b"t"), Message(0x2, b"\xfe"), Message(0x1, b""), Message(0x2, b""),
        Ping(b"1"), Message(0x2, b"abc"), Message(0x1, b""), Close(None, ""),
    ]  # fmt: skip


def test_untyped_decoder_returns_the_same_payloads_as_bytes():
    stream = frame(0x2, b"x" * 300) + frame(0x1, b"a", fin=False) + frame(0x0, b"b") + frame(0x1, b"c")
    typed = decode_all(stream, typed=True)
    assert [m.payload for m in typed] == decode_all(stream) == [b"x" * 300, b"ab", b"c"]


def test_typed_decoder_split_at_every_byte():
    stream = frame(0x2, b"z" * 200) + frame(0x1, b"x", fin=False) + frame(0x0, b"y" * 70, length_form=64)
    for cut in range(len(stream) + 1):
        d = FrameDecoder(typed=True)
        d.feed(stream[:cut])
        events = d.events()
        d.feed(stream[cut:])
        events += d.events()
        d.check()
        assert events == [Message(0x2, b"z" * 200), Message(0x1, b"x" + b"y" * 70)], cut


@pytest.mark.parametrize(
    ("data", "message"),
    [
        (frame(0x1, b"x", rsv=0x20), "reserved bits"),
        (frame(0x2, b"x", masked=True), "masked"),
        (frame(0x1, b"x", fin=False) + frame(0x2, b"y"), "unfinished"),
        (frame(0x2, b"x" * 1001), "exceeds --max-message"),
    ],
)
def test_typed_decoder_violations(data, message):
    d = FrameDecoder(max_message=1000, typed=True)
    d.feed(frame(0x1, b"ok") + data)
    assert d.events() == [Message(0x1, b"ok")]
    with pytest.raises(ProtocolError, match=message):
        d.check()


def test_close_frames():
    assert decode_all(frame(0x8, b"")) == [Close(None, "")]
    assert decode_all(frame(0x8, struct.pack(">H", 1001) + b"bye")) == [Close(1001, "bye")]
    assert decode_all(frame(0x8, struct.pack(">H", 4000))) == [Close(4000, "")]


def test_nothing_parsed_after_close():
    d = FrameDecoder()
    d.feed(frame(0x1, b"a") + frame(0x8, b"") + frame(0x1, b"b") + b"\xff\xff")
    assert d.events() == [b"a", Close(None, "")]
    d.feed(frame(0x1, b"c"))
    assert d.events() == []


@pytest.mark.parametrize(
    ("data", "message"),
    [
        (frame(0x1, b"x", masked=True), "masked"),
        (frame(0x1, b"x", rsv=0x40), "reserved bits"),
        (frame(0x1, b"x", rsv=0x10), "reserved bits"),
        (frame(0x3, b"x"), "unknown opcode"),
        (frame(0xB, b"x"), "unknown opcode"),
        (frame(0x9, b"x" * 126), "control frame"),
        (frame(0x9, b"x", fin=False), "fragmented control"),
        (frame(0x8, b"x", fin=False), "fragmented control"),
        (frame(0x0, b"x"), "continuation frame with no message"),
        (frame(0x1, b"x", fin=False) + frame(0x1, b"y"), "unfinished"),
        (frame(0x8, b"\x03"), "1-byte"),
        (frame(0x8, struct.pack(">H", 1005)), "invalid status code 1005"),
        (frame(0x8, struct.pack(">H", 999)), "invalid status code"),
        (frame(0x8, struct.pack(">H", 2000)), "invalid status code"),
        (frame(0x8, struct.pack(">H", 1000) + b"\xff\xfe"), "UTF-8"),
        (bytes((0x82, 127)) + struct.pack(">Q", 1 << 63), "most significant bit"),
    ],
)
def test_violations(data, message):
    d = FrameDecoder()
    d.feed(data)
    d.events()
    with pytest.raises(ProtocolError, match=message):
        d.check()


def test_oversized_message_rejected_before_payload_arrives():
    d = FrameDecoder(max_message=1000)
    d.feed(bytes((0x82, 127)) + struct.pack(">Q", 10**12))
    d.events()
    with pytest.raises(ProtocolError, match="exceeds --max-message") as err:
        d.check()
    assert err.value.close_code == 1009


def test_oversized_fragmented_message():
    d = FrameDecoder(max_message=1000)
    d.feed(frame(0x1, b"x" * 600, fin=False) + frame(0x0, b"y" * 600))
    d.events()
    with pytest.raises(ProtocolError, match="max-message"):
        d.check()


def test_empty_fragments_count_toward_max_message():
    """Issue 10 item 3: zero-length continuation frames are never free."""
    d = FrameDecoder(max_message=1000)
    d.feed(frame(0x1, b"[", fin=False) + frame(0x0, b"", fin=False) * 600)
    assert d.events() == []
    with pytest.raises(ProtocolError, match="exceeds --max-message") as err:
        d.check()
    assert err.value.close_code == 1009


def test_one_byte_fragments_reassemble_into_one_buffer():
    d = FrameDecoder(max_message=1 << 20)
    message = os.urandom(3000)
    wire = frame(0x2, message[:1], fin=False) + b"".join(frame(0x0, message[i:i + 1], fin=False)
                                                         for i in range(1, len(message) - 1))
    d.feed(wire + frame(0x0, message[-1:]))
    assert d.events() == [message]
    d.check()


def test_failed_allocation_leaves_the_decoder_usable():
    """Issue 10 item 7: the view is released only once the new buffer exists."""
    d = FrameDecoder(max_message=1 << 62, buffer_size=64 * 1024)
    d.feed(frame(0x1, b"before") + bytes((0x82, 127)) + struct.pack(">Q", 1 << 61))
    assert d.events() == [b"before"]
    d.check()
    with pytest.raises(AllocationFailed, match="cannot allocate") as err:
        d.reserve()
    assert err.value.close_code == 1009
    d.reset()
    d.feed(frame(0x1, b"after"))
    assert d.events() == [b"after"]


def test_events_before_a_violation_are_kept():
    d = FrameDecoder()
    d.feed(frame(0x1, b"good1") + frame(0x1, b"good2") + frame(0x1, b"x", masked=True) + frame(0x1, b"late"))
    assert d.events() == [b"good1", b"good2"]
    with pytest.raises(ProtocolError):
        d.check()


def test_recv_buffer_in_place_and_growth():
    d = FrameDecoder(buffer_size=64 * 1024)
    big = os.urandom(5 * 1024 * 1024)
    data = frame(0x2, big) + frame(0x1, b"after")
    view = memoryview(data)
    events = []
    while len(view):
        buf = d.recv_buffer()
        assert len(buf) >= MIN_READ
        n = min(len(buf), len(view), 100_000)
        buf[:n] = view[:n]
        d.commit(n)
        view = view[n:]
        events += d.events()
    assert events == [big, b"after"]
    assert d.buffered == 0


def test_encode_close():
    data = encode_close(1001, "bye")
    assert data[0] == 0x88 and data[1] == 0x80 | 5
    assert mask(data[6:], data[2:6]) == struct.pack(">H", 1001) + b"bye"
    assert encode_close(None)[:2] == b"\x88\x80"


# Close codes


def test_close_codes_are_an_int_enum_with_the_old_names_as_aliases():
    from balancer import frames

    assert frames.CLOSE_NORMAL is frames.CloseCode.NORMAL == 1000
    assert frames.CLOSE_GOING_AWAY is frames.CloseCode.GOING_AWAY == 1001
    assert frames.CLOSE_PROTOCOL_ERROR is frames.CloseCode.PROTOCOL_ERROR == 1002
    assert frames.CLOSE_INVALID_DATA is frames.CloseCode.INVALID_DATA == 1007
    assert frames.CLOSE_TOO_BIG is frames.CloseCode.TOO_BIG == 1009
    assert encode_close(frames.CloseCode.GOING_AWAY, "x", key=b"abcd") == encode_close(1001, "x", key=b"abcd")
    assert ProtocolError("x").close_code is frames.CloseCode.PROTOCOL_ERROR
    assert AllocationFailed("x").close_code is frames.CloseCode.TOO_BIG


def test_codes_a_peer_may_send():
    from balancer import frames

    may_send = {1000, 1001, 1002, 1003, 1007, 1008, 1009, 1010, 1011, 1012, 1013, 1014}
    assert may_send == frames._VALID_CLOSE_CODES
    assert {1005, 1006, 1015} == frames.NOT_ON_WIRE


@pytest.mark.parametrize("code", [1004, 1005, 1006, 1015, 999, 1016, 2999, 5000])
def test_close_codes_never_sent_by_a_peer_are_refused(code):
    with pytest.raises(ProtocolError, match="invalid status code"):
        decode_all(frame(0x8, code.to_bytes(2, "big")))

"""The sans-I/O websocket connection: events and a fake clock in, decisions and bytes out."""

import struct

import pytest

from balancer import frames
from balancer.causes import Cause
from balancer.frames import Close, CloseCode, Ping, Pong
from balancer.wsconn import (
    CLOSE_WAIT,
    LINGER,
    TIMER_SLACK,
    Ended,
    PingSent,
    PongReceived,
    WebSocketConnection,
    reply_code,
)


class Keys:
    """Masking keys that differ per frame but are known: 00010203, 04050607, ..."""

    def __init__(self) -> None:
        self.n = 0

    def __call__(self, size: int) -> bytes:
        key = bytes((self.n + i) % 256 for i in range(size))
        self.n += size
        return key


def conn(ping_interval=5.0, ping_timeout=3.0, opened_at: float | None = 100.0, **kw) -> WebSocketConnection:
    c = WebSocketConnection(ping_interval, ping_timeout, mask_key=Keys(), **kw)
    if opened_at is not None:
        c.open(opened_at)
    return c


def client_frame(data: bytes) -> tuple[int, bytes]:
    """Decode one masked client frame as a server would: (first byte, unmasked payload)."""
    b0, b1 = data[0], data[1]
    assert b1 & 0x80, "client frames are masked"
    n = b1 & 0x7F
    pos = 2
    if n == 126:
        n, pos = struct.unpack(">H", data[2:4])[0], 4
    elif n == 127:
        n, pos = struct.unpack(">Q", data[2:10])[0], 10
    key = data[pos : pos + 4]
    payload = data[pos + 4 :]
    assert len(payload) == n
    return b0, frames.mask(payload, key)


def close_frame(data: bytes) -> tuple[int, str]:
    b0, payload = client_frame(data)
    assert b0 == 0x80 | frames.OP_CLOSE
    return int.from_bytes(payload[:2], "big"), payload[2:].decode()


# -- control frames ------------------------------------------------------------------------


def test_ping_gets_a_pong_with_its_payload():
    c = conn()
    assert c.receive_control(Ping(b"hello"), 101.0) is None
    out = c.data_to_send()
    assert out == [frames.encode_frame(frames.OP_PONG, b"hello", key=b"\0\1\2\3")]
    assert client_frame(out[0]) == (0x80 | frames.OP_PONG, b"hello")
    assert c.data_to_send() == []  # taken once


def test_each_frame_has_its_own_masking_key():
    c = conn()
    c.receive_control(Ping(b"a"), 101.0)
    c.receive_control(Ping(b""), 101.0)
    first, second = c.data_to_send()
    assert first[2:6] == b"\0\1\2\3" and second[2:6] == b"\4\5\6\7"
    assert client_frame(second) == (0x80 | frames.OP_PONG, b"")


def test_largest_control_payload_is_echoed_whole():
    c = conn()
    c.receive_control(Ping(bytes(range(125))), 101.0)
    [pong] = c.data_to_send()
    assert client_frame(pong) == (0x8A, bytes(range(125)))


def test_pong_measures_the_round_trip_of_the_ping_in_flight():
    c = conn()
    assert c.receive_control(Pong(b"unsolicited"), 101.0) == PongReceived(None)
    assert type(c.keepalive(105.5)) is PingSent
    assert c.receive_control(Pong(struct.pack(">Q", 1)), 105.75) == PongReceived(0.25)
    assert c.receive_control(Pong(b""), 106.0) == PongReceived(None)  # that ping was answered
    assert c.data_to_send()[1:] == []  # the ping alone: a pong is never answered


# -- the closing handshake -------------------------------------------------------------------


def test_server_closes_first_lb_replies_with_its_code():
    c = conn()
    ended = c.receive_control(Close(1001, "going away"), 101.0)
    assert ended == Ended(Cause.CLOSE, "server closed the websocket (code 1001, 'going away')")
    [reply] = c.data_to_send()
    assert close_frame(reply) == (1001, "")
    assert c.close_sent
    c.close(CloseCode.GOING_AWAY, "shutting down", 101.5)  # a shutdown after it: no second close frame
    assert c.data_to_send() == []


@pytest.mark.parametrize("code", [None, 1005, 1006, 1015])
def test_codes_never_on_the_wire_are_answered_with_1000(code):
    c = conn()
    ended = c.receive_control(Close(code, ""), 101.0)
    assert isinstance(ended, Ended) and ended.cause is Cause.CLOSE and f"(code {code}, " in ended.message
    [reply] = c.data_to_send()
    assert close_frame(reply) == (1000, "")


@pytest.mark.parametrize("code", [1000, 1001, 1002, 1003, 1007, 1008, 1009, 1011, 1014, 3000, 4999])
def test_other_codes_are_echoed(code):
    assert reply_code(code) == code
    c = conn()
    c.receive_control(Close(code, "x"), 101.0)
    assert close_frame(c.data_to_send()[0]) == (code, "")


def test_server_close_reason_is_escaped_in_the_message():
    c = conn()
    ended = c.receive_control(Close(1000, "\x1b[2Jevil\nline"), 101.0)
    assert isinstance(ended, Ended)
    assert "\x1b" not in ended.message and "\n" not in ended.message and "evil" in ended.message


def test_lb_closes_first_and_the_server_replies():
    c = conn()
    deadline = c.close(CloseCode.GOING_AWAY, "shutting down", 110.0)
    assert deadline == 110.0 + CLOSE_WAIT and c.next_deadline() == deadline
    [frame] = c.data_to_send()
    assert close_frame(frame) == (1001, "shutting down")
    assert c.receive_control(Close(1000, ""), 111.0) == Ended(Cause.SHUTDOWN, "closed")
    assert c.data_to_send() == []  # the reply is never answered


def test_no_close_reply_ends_at_the_deadline():
    c = conn()
    c.close(CloseCode.GOING_AWAY, "shutting down", 110.0, wait=0.5)
    assert c.expired(110.4) is None
    assert c.expired(110.5) == Ended(Cause.SHUTDOWN, "shutting down (no close reply)")
    assert c.expired(111.0) is None and c.next_deadline() is None  # decided once


def test_pings_are_still_answered_while_closing():
    c = conn()
    c.close(CloseCode.GOING_AWAY, "shutting down", 110.0)
    c.data_to_send()
    c.receive_control(Ping(b"p"), 110.1)
    assert [client_frame(f) for f in c.data_to_send()] == [(0x8A, b"p")]


def test_close_reason_is_cut_to_a_control_frame():
    c = conn()
    c.close(CloseCode.GOING_AWAY, "x" * 300, 110.0)
    [frame] = c.data_to_send()
    assert close_frame(frame) == (1001, "x" * 123) and len(client_frame(frame)[1]) == 125


def test_eof_after_lb_closed_is_a_shutdown_otherwise_eof():
    assert conn().receive_eof(mid_frame=False) == Ended(Cause.EOF, "server closed the connection")
    assert conn().receive_eof(mid_frame=True) == Ended(Cause.EOF, "server closed the connection (mid-frame)")
    c = conn()
    c.close(CloseCode.GOING_AWAY, "shutting down", 110.0)
    assert c.receive_eof(mid_frame=False) == Ended(Cause.SHUTDOWN, "server closed the connection")


# -- a violation: close, then linger, bounded ------------------------------------------------


def test_violation_closes_and_lingers_at_most_linger_seconds():
    c = conn()
    deadline = c.fail(CloseCode.PROTOCOL_ERROR, "protocol error", Cause.PROTOCOL, "bad frame", 120.0)
    assert deadline == 120.0 + LINGER == c.next_deadline()
    assert close_frame(c.data_to_send()[0]) == (1002, "protocol error")
    assert c.lingering == Ended(Cause.PROTOCOL, "bad frame")
    assert c.expired(120.0 + LINGER - 0.01) is None
    assert c.expired(120.0 + LINGER) == Ended(Cause.PROTOCOL, "bad frame")


def test_the_first_violation_names_the_end():
    c = conn()
    c.fail(CloseCode.TOO_BIG, "message too big", Cause.MEMORY, "first", 120.0)
    assert c.fail(CloseCode.INVALID_DATA, "invalid payload", Cause.BADJSON, "second", 120.2) is None
    assert len(c.data_to_send()) == 1  # one close frame
    assert c.receive_eof(mid_frame=True) == Ended(Cause.MEMORY, "first")  # the server closed: no wait
    assert c.next_deadline() == 120.0 + LINGER


def test_violation_while_closing_lingers_for_the_shorter_bound():
    c = conn(linger=0.25)
    c.close(CloseCode.GOING_AWAY, "shutting down", 130.0)
    c.fail(CloseCode.PROTOCOL_ERROR, "protocol error", Cause.PROTOCOL, "bad", 130.5)
    assert len(c.data_to_send()) == 1  # the close frame of the shutdown only
    assert c.next_deadline() == 130.75
    assert c.expired(130.75) == Ended(Cause.PROTOCOL, "bad")
    assert c.expired(131.0) is None
    assert c.expired(130.0 + CLOSE_WAIT) == Ended(Cause.SHUTDOWN, "shutting down (no close reply)")


def test_a_timer_firing_within_the_slack_counts():
    c = conn()
    c.fail(CloseCode.PROTOCOL_ERROR, "protocol error", Cause.PROTOCOL, "bad", 0.0)
    assert c.expired(LINGER - TIMER_SLACK / 2) is not None


# -- keepalive --------------------------------------------------------------------------------


def test_ping_after_the_interval_of_silence_then_dead_after_the_timeout():
    c = conn(ping_interval=5.0, ping_timeout=3.0, opened_at=100.0)
    assert c.keepalive(105.0) is None  # not more than the interval yet
    assert c.data_to_send() == []
    sent = c.keepalive(105.25)
    assert sent == PingSent(struct.pack(">Q", 1))
    assert [client_frame(f) for f in c.data_to_send()] == [(0x89, struct.pack(">Q", 1))]
    assert c.keepalive(107.0) is None and c.data_to_send() == []  # one ping in flight
    assert c.keepalive(108.25) is None  # exactly the timeout: not more
    dead = c.keepalive(108.5)
    assert dead == Ended(Cause.TIMEOUT, "nothing received for 8.5 s (no pong within 3 s): connection is dead")


def test_whole_frames_answer_the_ping_and_restart_the_silence():
    c = conn(ping_interval=5.0, ping_timeout=3.0, opened_at=100.0)
    c.keepalive(105.5)
    c.frames_received(107.0)  # any whole frame, a pong or a trade
    assert c.ping_sent_at is None
    assert c.keepalive(109.0) is None and c.keepalive(112.0) is None
    assert c.keepalive(112.5) == PingSent(struct.pack(">Q", 2))
    assert c.pings == 2


def test_frames_keep_it_alive_without_pings():
    c = conn(ping_interval=1.0, ping_timeout=1.0, opened_at=0.0)
    for t in range(1, 50):
        c.frames_received(t * 0.9)
        assert c.keepalive(t * 0.9 + 0.5) is None
    assert c.data_to_send() == []


def test_paused_reading_is_not_silence():
    c = conn(ping_interval=5.0, ping_timeout=3.0, opened_at=100.0)
    c.pause()
    assert c.keepalive(200.0) is None and c.last_rx == 200.0
    c.resume(300.0)
    assert not c.paused and c.last_rx == 300.0
    assert c.keepalive(305.0) is None
    assert type(c.keepalive(305.5)) is PingSent


def test_paused_with_a_ping_in_flight_is_not_dead():
    c = conn(ping_interval=5.0, ping_timeout=3.0, opened_at=100.0)
    c.keepalive(106.0)
    c.pause()
    assert c.keepalive(150.0) is None
    c.resume(150.0)
    # The ping still waits for an answer and its timeout counts from when it was sent; in lb the
    # session reads at once on resume, so a pong that waited in the socket answers it first.
    assert isinstance(c.keepalive(150.5), Ended)


def test_resume_before_open_starts_no_clock():
    c = conn(opened_at=None)
    c.pause()
    c.resume(50.0)
    assert not c.paused and not c.opened and c.last_rx == 0.0


@pytest.mark.parametrize(("interval", "timeout", "period"),
                         [(5.0, 3.0, 0.75), (30.0, 20.0, 1.0), (0.1, 0.1, 0.05), (2.0, 8.0, 0.5)])
def test_tick_period_is_a_quarter_of_the_shortest_bound(interval, timeout, period):
    assert conn(interval, timeout).tick_period() == period


def test_streamed_for_counts_to_the_last_whole_frame():
    c = conn(opened_at=100.0)
    assert c.streamed_for(0.0) == 0.0  # never confirmed
    c.frames_received(130.0)
    assert c.streamed_for(110.0) == 20.0
    assert c.streamed_for(140.0) == 0.0  # never negative


def test_text_frames_go_out_in_order_with_control_replies():
    c = conn()
    c.send_text(b'{"action":"auth"}')
    c.receive_control(Ping(b"1"), 101.0)
    c.send_text(b'{"action":"subscribe"}')
    assert [client_frame(f) for f in c.data_to_send()] == [
        (0x81, b'{"action":"auth"}'), (0x8A, b"1"), (0x81, b'{"action":"subscribe"}')]

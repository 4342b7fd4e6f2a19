"""common.natsproto: the NATS client protocol from bytes, with the protocol document's own
examples (docs.nats.io, "Client Protocol"), every split point, and what a misbehaving server
may send."""

from __future__ import annotations

import pytest

from common import natsproto
from common.natsproto import PING, PONG, Err, Info, Msg, Ok, Parser, ProtocolError

# The protocol document's examples
HMSG_EXAMPLE = b"HMSG FOO.BAR 34 45\r\nNATS/1.0\r\nFoodGroup: vegetable\r\n\r\nHello World\r\n"
HMSG_REPLY_EXAMPLE = b"HMSG FOO.BAR 9 BAZ.69 34 45\r\nNATS/1.0\r\nFoodGroup: vegetable\r\n\r\nHello World\r\n"


def fields(event: object) -> object:
    if isinstance(event, Msg):
        return ("MSG", event.subject, event.sid, event.reply, event.hdr, event.data)
    if isinstance(event, Info):
        return ("INFO", dict(event))
    if isinstance(event, Err):
        return ("ERR", str(event))
    return type(event).__name__


def parse_all(data: bytes, parser: Parser | None = None) -> list[object]:
    return [fields(e) for e in (parser or Parser()).feed(data)]


def test_the_documents_msg_examples() -> None:
    assert parse_all(b"MSG FOO.BAR 9 11\r\nHello World\r\n") == [
        ("MSG", "FOO.BAR", 9, "", b"", b"Hello World")]
    assert parse_all(b"MSG FOO.BAR 9 GREETING.34 11\r\nHello World\r\n") == [
        ("MSG", "FOO.BAR", 9, "GREETING.34", b"", b"Hello World")]


def test_the_documents_hmsg_examples() -> None:
    # the first example of the document names no sid; a server always sends one
    with pytest.raises(ProtocolError):
        Parser().feed(HMSG_EXAMPLE)
    [msg] = Parser().feed(HMSG_REPLY_EXAMPLE)
    assert isinstance(msg, Msg)
    assert (msg.subject, msg.sid, msg.reply) == ("FOO.BAR", 9, "BAZ.69")
    assert msg.hdr == b"NATS/1.0\r\nFoodGroup: vegetable\r\n\r\n" and len(msg.hdr) == 34
    assert msg.data == b"Hello World"
    assert msg.headers == {"FoodGroup": "vegetable"} and msg.status == ""
    [plain] = Parser().feed(HMSG_REPLY_EXAMPLE.replace(b" BAZ.69", b""))
    assert isinstance(plain, Msg) and plain.reply == "" and plain.data == b"Hello World"


def test_control_operations_and_case() -> None:
    data = (b'INFO {"server_id":"X","max_payload":1048576,"headers":true}\r\n'
            b"PING\r\npong\r\n+OK\r\n-ERR 'Authorization Violation'\r\nmSg a 1 2\r\nhi\r\n")
    assert parse_all(data) == [("INFO", {"server_id": "X", "max_payload": 1048576, "headers": True}),
                               "Ping", "Pong", "Ok", ("ERR", "Authorization Violation"),
                               ("MSG", "a", 1, "", b"", b"hi")]
    assert PING is not PONG and isinstance(Parser().feed(b"+OK\r\n")[0], Ok)


def test_tabs_and_repeated_spaces_separate_fields() -> None:
    assert parse_all(b"MSG\tFOO  9 \t R 3\r\nabc\r\n") == [("MSG", "FOO", 9, "R", b"", b"abc")]


STREAM = (b'INFO {"max_payload":1048576}\r\n' + HMSG_REPLY_EXAMPLE + b"PING\r\n"
          + b"MSG t.1 2 _INBOX.x.1 0\r\n\r\n"  # an empty payload
          + b"HMSG _INBOX.y 3 16 16\r\nNATS/1.0 503\r\n\r\n\r\n"  # a status without payload
          + b"MSG bin 4 6\r\n\r\n\x00\xff\r\n\r\n")  # a payload holding CRLF and any byte


@pytest.mark.parametrize("cut", range(1, len(STREAM)))
def test_every_split_point_gives_the_same_events(cut: int) -> None:
    whole = parse_all(STREAM)
    parser = Parser()
    assert parse_all(STREAM[:cut], parser) + parse_all(STREAM[cut:], parser) == whole
    assert parser.buffered == 0


def test_byte_by_byte() -> None:
    parser = Parser()
    events = []
    for i in range(len(STREAM)):
        events += parse_all(STREAM[i:i + 1], parser)
    assert events == parse_all(STREAM)
    assert events[-1] == ("MSG", "bin", 4, "", b"", b"\r\n\x00\xff\r\n")


def test_status_lines() -> None:
    assert natsproto.parse_headers(b"NATS/1.0 503\r\n\r\n") == ("503", "", {"Status": "503"})
    status, description, headers = natsproto.parse_headers(
        b"NATS/1.0 408 Request Timeout\r\nNats-Pending-Messages: 7\r\nNats-Pending-Bytes: 0\r\n\r\n")
    assert (status, description) == ("408", "Request Timeout")
    assert headers == {"Status": "408", "Description": "Request Timeout", "Nats-Pending-Messages": "7",
                       "Nats-Pending-Bytes": "0"}
    assert natsproto.parse_headers(b"NATS/1.0 100 Idle Heartbeat\r\n\r\n")[:2] == ("100", "Idle Heartbeat")


def test_headers_keep_the_first_of_a_repeated_name_and_strip_spaces() -> None:
    block = b"NATS/1.0\r\nA: 1\r\nB:two words \r\nA: 3\r\n\r\n"
    assert natsproto.parse_headers(block) == ("", "", {"A": "1", "B": "two words"})


@pytest.mark.parametrize("block", [b"HTTP/1.1 200\r\n\r\n", b"NATS/1.0\r\nno colon here\r\n\r\n", b""])
def test_malformed_header_blocks(block: bytes) -> None:
    with pytest.raises(ProtocolError):
        natsproto.parse_headers(block)


def test_a_message_with_a_malformed_header_block_fails_when_read() -> None:
    [msg] = Parser().feed(b"HMSG s 1 7 9\r\nBROKEN!ab\r\n")
    assert isinstance(msg, Msg) and msg.data == b"ab"
    with pytest.raises(ProtocolError):
        _ = msg.headers


def test_commands_as_the_document_writes_them() -> None:
    assert natsproto.pub_header(b"FOO", b"", 11) + b"Hello NATS!\r\n" == b"PUB FOO 11\r\nHello NATS!\r\n"
    assert (natsproto.pub_header(b"FRONT.DOOR", b"JOKE.22", 11) + b"Knock Knock\r\n"
            == b"PUB FRONT.DOOR JOKE.22 11\r\nKnock Knock\r\n")
    hdr = natsproto.encode_headers({"Bar": "Baz"})
    assert (natsproto.hpub_header(b"FOO", b"", len(hdr), 11) + hdr + b"Hello NATS!\r\n"
            == b"HPUB FOO 22 33\r\nNATS/1.0\r\nBar: Baz\r\n\r\nHello NATS!\r\n")
    hdr = natsproto.encode_headers({"BREAKFAST": "donut", "LUNCH": "burger"})
    assert (natsproto.hpub_header(b"FRONT.DOOR", b"JOKE.22", len(hdr), 11) + hdr + b"Knock Knock\r\n"
            == b"HPUB FRONT.DOOR JOKE.22 45 56\r\nNATS/1.0\r\nBREAKFAST: donut\r\nLUNCH: burger\r\n\r\n"
               b"Knock Knock\r\n")
    assert natsproto.sub_command(b"FOO", 1) == b"SUB FOO 1\r\n"
    assert natsproto.sub_command(b"BAR", 44, b"G1") == b"SUB BAR G1 44\r\n"
    assert natsproto.unsub_command(1) == b"UNSUB 1\r\n"
    assert natsproto.connect_command({"verbose": False}) == b'CONNECT {"verbose":false}\r\n'


def test_what_would_break_a_command_line_is_refused() -> None:
    for subject in ("", "a b", "a\r\nPUB x 1", "tab\there"):
        with pytest.raises(ValueError):
            natsproto.check_subject(subject)
    assert natsproto.check_subject("trades.7") == b"trades.7"
    for name, value in (("A:B", "x"), ("A B", "x"), ("", "x"), ("A", "x\r\nB: y")):
        with pytest.raises(ValueError):
            natsproto.encode_headers({name: value})


# -- a misbehaving server: every case is a ProtocolError (the client drops the connection), and
# nothing it sends makes the parser keep more than its bounds --------------------------------


@pytest.mark.parametrize("data", [
    b"MSG a 1\r\n",  # too few fields
    b"MSG a 1 b c 3\r\nabc\r\n",  # too many
    b"HMSG a 1 5 3\r\nabc\r\n",  # a header longer than its message
    b"MSG a 1 -3\r\nabc\r\n",  # a negative size
    b"MSG a x 3\r\nabc\r\n",  # a sid that is no number
    b"MSG a 1 3\r\nabcXY",  # no CRLF after the payload
    b"MSG a 1 99999999999999999999\r\n",  # a size over 19 digits
    b"HELLO there\r\n",  # an unknown operation
    b"INFO not json\r\n",
    b"INFO [1,2]\r\n",
])
def test_malformed_input(data: bytes) -> None:
    with pytest.raises(ProtocolError):
        Parser().feed(data)


def test_a_control_line_without_end_is_bounded() -> None:
    parser = Parser()
    parser.feed(b"INFO " + b"x" * (natsproto.MAX_CONTROL_LINE - 10))  # still possible
    with pytest.raises(ProtocolError, match="control line longer"):
        parser.feed(b"y" * 20)


def test_a_message_over_the_bound_is_refused_before_its_payload_arrives() -> None:
    parser = Parser(max_payload=1000)
    with pytest.raises(ProtocolError, match="over the 1000-byte bound"):
        parser.feed(b"MSG a 1 1001\r\n")
    assert Parser(max_payload=1000).feed(b"MSG a 1 1000\r\n" + b"x" * 1000 + b"\r\n")[0].data == b"x" * 1000


def test_events_before_an_error_are_kept_and_the_error_comes_next() -> None:
    parser = Parser()
    assert parse_all(b"PONG\r\nWHAT\r\n", parser) == ["Pong"]  # the handshake's PONG is not lost
    assert isinstance(parser.error, ProtocolError)
    with pytest.raises(ProtocolError):
        parser.feed(b"PING\r\n")
    assert parser.buffered == 0


# Messages of natsproto.BIG bytes or more that a read ends inside are gathered from the reads
# (kept by reference, joined once) instead of in the parser's buffer: the same events must come
# out wherever the reads are cut, with the payload as bytes.
_BIG_HDR = b"NATS/1.0\r\nNats-Msg-Id: e.3.100\r\nLb-Messages: 7\r\n\r\n"
_BIG_DATA = bytes(range(256)) * ((natsproto.BIG + 300) // 256) + b"\r\n"  # CRLF inside too
BIG_STREAM = (b"PING\r\n"
              + b"HMSG trades.3 9 $JS.ACK.S.c.1.5.5.0.1 %d %d\r\n"
              % (len(_BIG_HDR), len(_BIG_HDR) + len(_BIG_DATA))
              + _BIG_HDR + _BIG_DATA + b"\r\n"
              + b"MSG big.plain 4 %d\r\n" % len(_BIG_DATA) + _BIG_DATA + b"\r\n"
              + b"MSG small 5 3\r\nabc\r\nPONG\r\n")


def _cuts(count: int) -> list[list[int]]:
    """Cut points through the big stream: inside every part of it, and many reads at once."""
    marks = sorted({1, 5, 6, 7, 40, 60, 61, 62, 100, 5000, natsproto.BIG, len(BIG_STREAM) // 2,
                    len(BIG_STREAM) - 12, len(BIG_STREAM) - 3, len(BIG_STREAM) - 1})
    out = [[m] for m in marks]
    out += [marks[i:i + count] for i in range(0, len(marks), count)]
    out.append(list(range(1000, len(BIG_STREAM), 1000)))
    return out


@pytest.mark.parametrize("cuts", _cuts(3), ids=str)
def test_big_messages_come_out_the_same_wherever_the_reads_end(cuts: list[int]) -> None:
    whole = parse_all(BIG_STREAM)
    names = [e if isinstance(e, str) else e[1] for e in whole]
    assert names == ["Ping", "trades.3", "big.plain", "small", "Pong"]
    parser = Parser()
    events: list[object] = []
    last = 0
    for cut in [*cuts, len(BIG_STREAM)]:
        events += parse_all(BIG_STREAM[last:cut], parser)
        last = cut
    assert events == whole
    assert parser.buffered == 0


def test_a_gathered_payload_is_bytes_and_the_callers_buffer_is_not_kept() -> None:
    parser = Parser()
    head = bytearray(BIG_STREAM[:3000])
    assert parse_all(head, parser) == ["Ping"]
    assert parser.buffered == 3000 - BIG_STREAM.index(_BIG_HDR)  # the header block on: gathered
    head[:] = b"\xee" * len(head)  # the caller reuses its buffer
    rest = memoryview(bytearray(BIG_STREAM[3000:]))
    events = parser.feed(rest)
    assert [type(e.data) for e in events if isinstance(e, Msg)] == [bytes, bytes, bytes]
    assert events[0].data == _BIG_DATA and events[0].hdr == _BIG_HDR
    assert events[0].headers["Nats-Msg-Id"] == "e.3.100"


def test_a_gathered_message_not_followed_by_crlf_is_refused() -> None:
    broken = BIG_STREAM.replace(_BIG_DATA + b"\r\nMSG big.plain", _BIG_DATA + b"XXMSG big.plain")
    assert broken != BIG_STREAM
    parser = Parser()
    assert parse_all(broken[:200], parser) == ["Ping"]
    with pytest.raises(ProtocolError, match="not followed by CRLF"):
        parser.feed(broken[200:])
    assert parser.buffered == 0


def test_a_big_message_trickled_in_costs_its_size_not_an_object_a_read() -> None:
    import tracemalloc

    data = b"z" * 200_000
    stream = b"MSG slow 1 %d\r\n" % len(data) + data + b"\r\n"
    parser = Parser()
    tracemalloc.start()
    try:
        events = []
        for i in range(0, len(stream), 3):  # a hostile server: three bytes a packet
            events += parser.feed(stream[i:i + 3])
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert [e.data == data for e in events] == [True]
    # the gathered bytes while they grow, and the payload joined from them: a few times the
    # message (a memoryview kept per read would be ~60 times it)
    assert peak < 4 * len(data)

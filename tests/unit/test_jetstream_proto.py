"""The JetStream carriage's pure layers: the bridge's (workers/jsproto.py) and lb-remote's
(balancer/jsfeed.py), written independently, checked against each other and by bytes."""

from __future__ import annotations

import pytest

from balancer import jsfeed
from common import jspull
from workers import jsproto
from workers.framing import frame_all

PAYLOADS = [b'{"ev":"T","sym":"AAPL","q":%d}' % i for i in range(10)]
DATA = frame_all(PAYLOADS)
SIZE = len(DATA) // len(PAYLOADS)  # every message is the same size here


def test_msg_id_round_trip_on_both_sides():
    text = jsproto.make_msg_id("vm-1234-5678", 7, 123456789)
    assert text == "vm-1234-5678.7.123456789"
    assert jsproto.parse_msg_id(text) == ("vm-1234-5678", 7, 123456789)
    assert jsfeed.parse_origin(text) == ("vm-1234-5678", 7, 123456789)


@pytest.mark.parametrize("bad", ["", "a.b", "a.1", "a.1.x", "a b.1.2", "a.-1.2", "a.1.2.3"])
def test_msg_id_rejects(bad):
    with pytest.raises(ValueError):
        jsproto.parse_msg_id(bad)
    assert jsfeed.parse_origin(bad) is None


def test_make_msg_id_rejects_bad_epoch():
    with pytest.raises(ValueError):
        jsproto.make_msg_id("a.b", 0, 0)


@pytest.mark.parametrize(("text", "expected"), [
    ("0-3", [0, 1, 2, 3]), ("5", [5]), ("0-1,8,10-11", [0, 1, 8, 10, 11]), (" 2 , 0 ", [0, 2]),
])
def test_partitions(text, expected):
    assert jsproto.parse_partitions(text) == expected
    assert jsfeed.parse_partitions(text) == expected


@pytest.mark.parametrize("bad", ["", "a", "3-1", "0-2,2", "1-", "-1"])
def test_partitions_reject(bad):
    with pytest.raises(ValueError):
        jsproto.parse_partitions(bad)
    with pytest.raises(ValueError):
        jsfeed.parse_partitions(bad)


def test_partitions_limit():
    with pytest.raises(ValueError, match="out of range"):
        jsproto.parse_partitions("0-8", limit=8)


def test_cut_batch_on_boundaries():
    assert jsproto.cut_batch(DATA, 3 * SIZE, 1 << 20) == 3 * SIZE
    assert jsproto.cut_batch(DATA, 3 * SIZE + 5, 1 << 20) == 3 * SIZE  # never inside a message
    assert jsproto.cut_batch(DATA, 1, 1 << 20) == SIZE  # a message bigger than the batch goes alone
    assert jsproto.cut_batch(DATA, 1 << 20, 1 << 20) == len(DATA)
    assert jsproto.cut_batch(DATA[:-1], 1 << 20, 1 << 20) == len(DATA) - SIZE  # a partial last one waits
    assert jsproto.cut_batch(DATA[:3], 1 << 20, 1 << 20) == 0
    assert jsproto.complete_prefix(DATA[: 2 * SIZE + 7], 1 << 20) == 2 * SIZE


def test_cut_batch_rejects_oversized_first_message():
    with pytest.raises(ValueError):
        jsproto.cut_batch(b"\xff\xff\xff\x00{}", 1 << 20, 1 << 20)


def test_needed_for_first():
    assert jsproto.needed_for_first(b"\x01") == 4
    assert jsproto.needed_for_first(DATA) == SIZE


def test_cuts_are_what_the_remote_accepts():
    """Every batch the bridge cuts parses on the remote side into the same messages."""
    pos, seen = 0, []
    while pos < len(DATA):
        size = jsproto.cut_batch(DATA[pos:], 2 * SIZE + 1, 1 << 20)
        batch = DATA[pos : pos + size]
        lens = jsfeed.message_lengths(batch, 1 << 20)
        assert sum(lens) + 4 * len(lens) == size
        seen.extend(len(p) for p in PAYLOADS[len(seen) : len(seen) + len(lens)])
        assert list(lens) == seen[-len(lens):]
        pos += size
    assert len(seen) == len(PAYLOADS)


@pytest.mark.parametrize("bad", [DATA[:-1], DATA + b"\x01\x00", b"\xff\xff\xff\x7f{}"])
def test_remote_rejects_what_is_not_whole_messages(bad):
    with pytest.raises(jsfeed.BadMessage):
        jsfeed.message_lengths(bad, 1 << 20)


def test_boundary_before():
    assert jsfeed.boundary_before(DATA, 0) == 0
    assert jsfeed.boundary_before(DATA, 1) == 0  # inside the header of the first message
    assert jsfeed.boundary_before(DATA, SIZE - 1) == 0
    assert jsfeed.boundary_before(DATA, SIZE) == SIZE
    assert jsfeed.boundary_before(DATA, 3 * SIZE + 5) == 3 * SIZE
    assert jsfeed.boundary_before(DATA, len(DATA)) == len(DATA)
    uneven = frame_all([b"x" * 10, b"", b"y" * 300, b"z"])
    starts = [0, 14, 18, 322]
    for offset in range(len(uneven) + 1):
        assert jsfeed.boundary_before(uneven, offset) == max(s for s in [*starts, len(uneven)] if s <= offset)


def test_boundary_from():
    assert jsfeed.boundary_from(DATA, 0) == 0
    assert jsfeed.boundary_from(DATA, 1) == SIZE  # inside the first message: skip to the next
    assert jsfeed.boundary_from(DATA, SIZE) == SIZE
    assert jsfeed.boundary_from(DATA, 10 * SIZE + 3) == len(DATA)


def test_prefix_check():
    assert jsproto.check_prefix("trades.us") == "trades.us"
    for bad in ("", "a..b", "a.*", "a b", "a.>"):
        with pytest.raises(ValueError):
            jsproto.check_prefix(bad)


@pytest.mark.parametrize("url", ["nats://u:p@h:4222", "nats://token@h:4222", "tls://a:b@h:1"])
def test_no_secret_in_a_nats_url(url):
    from common.natsconn import parse_servers

    with pytest.raises(ValueError, match="--creds"):
        parse_servers(url)


def test_nats_urls():
    from common.natsconn import parse_servers

    text = "nats://127.0.0.1:4222, tls://nats.example:4443"
    assert parse_servers(text) == ["nats://127.0.0.1:4222", "tls://nats.example:4443"]
    for bad in ("http://h:1", "nats://", "h:4222"):
        with pytest.raises(ValueError):
            parse_servers(bad)


# -- outstanding pull requests (common.jspull.PullCredit: lb-remote's and the reader's) --------------


def test_pull_status_reads_code_and_pending():
    assert jspull.pull_status(None) is None
    assert jspull.pull_status({"Nats-Msg-Id": "a.1.0"}) is None  # a message, not a status
    assert jspull.pull_status({"Status": "408", "Description": "Request Timeout",
                               "Nats-Pending-Messages": "7", "Nats-Pending-Bytes": "0"}) == ("408", 7)
    assert jspull.pull_status({"Status": "409", "Description": "Consumer Deleted"}) == ("409", None)
    assert jspull.pull_status({"Status": "408", "Nats-Pending-Messages": "-1"}) == ("408", None)


def test_credit_tops_up_at_half_and_only_with_room():
    credit = jspull.PullCredit(8, 5.0)
    assert credit.wanted(room=False) == 0
    assert credit.wanted(room=True) == 8
    credit.requested(8, 0.0)
    assert credit.wanted(True) == 0
    for t in range(3):
        credit.delivered(float(t))
    assert credit.outstanding == 5 and credit.wanted(True) == 0  # 5 > 8 // 2
    credit.delivered(3.0)
    assert credit.wanted(True) == 4  # 4 outstanding: top up to a batch
    assert credit.wanted(False) == 0  # the worker is behind: no more


def test_credit_counts_only_the_total_across_requests():
    """Two requests outstanding, filled in any order, ended by 408s that say what they owed."""
    credit = jspull.PullCredit(10, 5.0)
    credit.requested(10, 0.0)
    for _ in range(6):
        credit.delivered(0.1)
    credit.requested(credit.wanted(True), 0.2)  # 4 + 6
    assert credit.outstanding == 10
    credit.delivered(0.3)
    credit.status("408", 3, 5.0)  # the first request expired owing 3 (it brought 7)
    assert credit.outstanding == 6
    credit.status("100", None, 5.1)  # a heartbeat changes nothing
    assert credit.outstanding == 6
    credit.status("408", 6, 5.2)
    assert credit.outstanding == 0
    credit.delivered(5.3)  # a late message of a forgotten request never goes negative
    assert credit.outstanding == 0


def test_credit_forgets_requests_the_server_cannot_owe():
    credit = jspull.PullCredit(4, 5.0)
    credit.requested(4, 10.0)
    credit.status("409", None, 11.0)  # ended without a count: start again from nothing
    assert credit.outstanding == 0 and credit.wanted(True) == 4
    credit.requested(4, 12.0)
    assert not credit.lost(17.9)  # within one life (5 s) and a margin
    assert credit.outstanding == 4
    assert credit.lost(18.1)  # silent past it: a restart or a leader change forgot them
    assert credit.outstanding == 0 and not credit.lost(30.0)
    with pytest.raises(ValueError):
        jspull.PullCredit(0, 5.0)


# -- the stream sequence from a delivery's ack subject: lb-remote's (balancer.jsfeed) and the
# Python reader's (workers.jsproto), two implementations, checked against nats-py's ----------------

_V1 = "$JS.ACK.FEED.lb-remote-3.1.{seq}.{cseq}.1733280000000000000.{pending}"
_V2 = "$JS.ACK.{domain}.ACCHASH.FEED.lb-remote-3.2.{seq}.{cseq}.1733280000000000000.{pending}.tok"
SEQUENCE_READERS = [jsfeed.stream_sequence, jsproto.stream_sequence]


@pytest.mark.parametrize("read", SEQUENCE_READERS)
@pytest.mark.parametrize("template", [_V1, _V2, _V2.removesuffix(".tok")])
@pytest.mark.parametrize("seq", [1, 7, 123456789012])
def test_stream_sequence_reads_what_nats_py_reads(read, template, seq):
    from nats.aio.msg import Msg

    reply = template.format(seq=seq, cseq=seq + 5, pending=3, domain="_")
    assert read(reply) == seq
    assert Msg.Metadata._from_reply(reply).sequence.stream == seq  # the reference agrees


@pytest.mark.parametrize("read", SEQUENCE_READERS)
@pytest.mark.parametrize("reply", [None, "", "_INBOX.x.y", "$JS.ACK.FEED.c.1.2.3.4",  # 8 tokens
                                   "$JS.ACK.D.H.FEED.c.1.2.3.4",  # 10 tokens: neither form
                                   "$JS.NAK.FEED.c.1.2.3.4.5", "$JS.ACK.FEED.c.1.x.3.4.5",
                                   "$JS.ACK.FEED.c.1.-2.3.4.5", "$JS.ACK.FEED.c.1.\u00b2.3.4.5"])
def test_stream_sequence_refuses_what_is_not_a_delivery(read, reply):
    with pytest.raises(ValueError):  # jsfeed.BadMessage is a ValueError
        read(reply)


# -- which JetStream API answers pass (common.natsconn.refusal) -----------------------------------


def test_answers_that_can_pass_are_not_refusals():
    from common.jsapi import APIError
    from common.natsclient import NoResponders, NotConnected
    from common.natsconn import refusal

    assert refusal(TimeoutError()) is None
    assert refusal(NoResponders("no responders")) is None
    assert refusal(NotConnected("reconnecting")) is None
    assert refusal(APIError(503, 0, "no responders")) is None
    for err_code in (10004, 10005, 10008, 10009, 10023):  # a cluster forming or electing
        assert refusal(APIError(500, err_code, "x")) is None
        assert refusal(APIError(400, err_code, "x")) is None


def test_answers_that_stay_are_refusals():
    from common.jsapi import APIError
    from common.natsconn import refusal

    text = refusal(APIError(500, 10074, "replicas > 1 not supported in non-clustered mode"))
    assert text == "replicas > 1 not supported in non-clustered mode (code 500, error 10074)"
    text = refusal(APIError(400, 10058, "stream name already in use"))
    assert text is not None and "10058" in text

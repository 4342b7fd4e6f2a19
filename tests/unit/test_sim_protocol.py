"""The Polygon session state machine: exact status texts, order, and refusals."""

from __future__ import annotations

import json

from simulator.protocol import (
    AUTH_FAILED,
    AUTH_SUCCESS,
    AUTH_TIMEOUT,
    CONNECTED,
    MAX_CONNECTIONS,
    NOT_AUTHORIZED,
    POLICY_VIOLATION,
    PolygonSession,
    State,
    status_frame,
)


def statuses(frames: list[bytes]) -> list[tuple[str, str]]:
    out = []
    for frame in frames:
        (event,) = json.loads(frame)
        assert list(event) == ["ev", "status", "message"] and event["ev"] == "status"
        out.append((event["status"], event["message"]))
    return out


def test_status_frames_are_polygons_bytes() -> None:
    assert CONNECTED == b'[{"ev":"status","status":"connected","message":"Connected Successfully"}]'
    assert AUTH_SUCCESS == b'[{"ev":"status","status":"auth_success","message":"authenticated"}]'
    assert AUTH_FAILED == (b'[{"ev":"status","status":"auth_failed",'
                           b'"message":"authentication failed"}]')
    assert AUTH_TIMEOUT == (b'[{"ev":"status","status":"auth_timeout",'
                            b'"message":"No authentication request received."}]')
    assert statuses([MAX_CONNECTIONS])[0][0] == "max_connections"
    assert statuses([MAX_CONNECTIONS])[0][1].startswith("Maximum number of websocket connections")
    assert status_frame("success", "subscribed to: T.AAPL") == \
        b'[{"ev":"status","status":"success","message":"subscribed to: T.AAPL"}]'


def test_auth_then_subscribe_list_one_status_per_topic() -> None:
    session = PolygonSession()
    assert session.opened() == [CONNECTED]
    reply = session.receive('{"action":"auth","params":"KEY"}')
    assert reply.frames == [AUTH_SUCCESS] and reply.authenticated_key == "KEY"
    assert session.state is State.AUTHENTICATED and reply.close is None
    reply = session.receive(b'{"action":"subscribe","params":"T.AAPL,T.MSFT"}')
    assert statuses(reply.frames) == [("success", "subscribed to: T.AAPL"),
                                      ("success", "subscribed to: T.MSFT")]
    assert reply.subscriptions_changed
    subs = session.subscriptions
    assert subs.wants("AAPL") and subs.wants("MSFT") and not subs.wants("SPY")
    assert not subs.all_trades and subs.trade_symbols == {"AAPL", "MSFT"}


def test_wildcard_and_unsubscribe() -> None:
    session = PolygonSession()
    session.receive('{"action":"auth","params":"k"}')
    session.receive('{"action":"subscribe","params":"T.*"}')
    assert session.subscriptions.all_trades and session.subscriptions.wants("ANYTHING")
    reply = session.receive('{"action":"unsubscribe","params":"T.*"}')
    assert statuses(reply.frames) == [("success", "unsubscribed to: T.*")]
    assert not session.subscriptions.any_trades and not session.subscriptions.wants("AAPL")


def test_other_channels_are_acknowledged_but_carry_no_trades() -> None:
    session = PolygonSession()
    session.receive('{"action":"auth","params":"k"}')
    reply = session.receive('{"action":"subscribe","params":"Q.*, AM.AAPL"}')
    assert statuses(reply.frames) == [("success", "subscribed to: Q.*"),
                                      ("success", "subscribed to: AM.AAPL")]
    assert not session.subscriptions.any_trades


def test_anything_before_auth_is_refused_and_changes_nothing() -> None:
    session = PolygonSession()
    for message in ('{"action":"subscribe","params":"T.*"}',
                    '{"action":"unsubscribe","params":"T.*"}', '{"action":"other"}'):
        reply = session.receive(message)
        assert reply.frames == [NOT_AUTHORIZED] and reply.close is None
    assert session.state is State.AWAITING_AUTH and not session.subscriptions.topics
    assert statuses([NOT_AUTHORIZED]) == [("error", "not authorized")]


def test_wrong_or_empty_key_fails_and_closes() -> None:
    for params in ('"bad"', '""', "null", "5"):
        session = PolygonSession(frozenset({"good"}))
        reply = session.receive('{"action":"auth","params":' + params + "}")
        assert reply.frames == [AUTH_FAILED]
        assert reply.close is not None and reply.close.code == POLICY_VIOLATION
        assert reply.close.end_reason == "auth_failed" and session.state is State.CLOSED
        assert session.receive('{"action":"auth","params":"good"}').frames == []


def test_any_non_empty_key_by_default() -> None:
    assert PolygonSession().receive('{"action":"auth","params":"x"}').frames == [AUTH_SUCCESS]
    assert PolygonSession().receive('{"action":"auth","params":""}').frames == [AUTH_FAILED]


def test_auth_timeout_only_while_waiting() -> None:
    session = PolygonSession()
    reply = session.auth_timed_out()
    assert reply.frames == [AUTH_TIMEOUT] and reply.close is not None
    assert reply.close.end_reason == "auth_timeout" and reply.close.code == POLICY_VIOLATION
    authed = PolygonSession()
    authed.receive('{"action":"auth","params":"k"}')
    assert authed.auth_timed_out().frames == [] and authed.state is State.AUTHENTICATED


def test_malformed_messages_get_errors() -> None:
    session = PolygonSession()
    assert statuses(session.receive("not json").frames)[0] == ("error", "invalid message: not JSON")
    assert statuses(session.receive("[1,2]").frames)[0][0] == "error"
    session.receive('{"action":"auth","params":"k"}')
    assert statuses(session.receive('{"action":"subscribe","params":5}').frames)[0][0] == "error"
    assert statuses(session.receive('{"action":"subscribe","params":"AAPL"}').frames) == \
        [("error", "invalid topic: AAPL")]
    assert statuses(session.receive('{"action":"auth","params":"k"}').frames) == \
        [("error", "already authenticated")]
    assert statuses(session.receive('{"action":"dance","params":""}').frames) == \
        [("error", "unknown action: dance")]

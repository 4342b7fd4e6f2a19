import json

import pytest

from balancer.polygon import (
    AuthFailed,
    Evicted,
    Phase,
    PolygonSession,
    SessionError,
    auth_message,
    subscribe_message,
)


def st(status, message=""):
    return {"ev": "status", "status": status, "message": message}


def test_messages_are_exact_json():
    assert json.loads(auth_message('k"ey')) == {"action": "auth", "params": 'k"ey'}
    assert subscribe_message("T.AAPL,T.MSFT") == b'{"action":"subscribe","params":"T.AAPL,T.MSFT"}'


def test_happy_path():
    s = PolygonSession("KEY", "T.*")
    assert s.opening_messages() == [auth_message("KEY")]
    assert s.on_status(st("connected", "Connected Successfully")) == []
    assert s.on_status(st("auth_success", "authenticated")) == [subscribe_message("T.*")]
    assert s.phase is Phase.SUBSCRIBING
    assert s.on_status(st("success", "subscribed to: T.*")) == []
    assert s.phase is Phase.STREAMING
    assert s.on_status(st("success", "subscribed to: T.MSFT")) == []


def test_auth_failed():
    s = PolygonSession("KEY", "T.*")
    with pytest.raises(AuthFailed, match="authentication failed"):
        s.on_status(st("auth_failed", "authentication failed"))


def test_max_connections_evicts_in_any_phase():
    s = PolygonSession("KEY", "T.*")
    s.on_status(st("auth_success"))
    s.on_status(st("success"))
    with pytest.raises(Evicted, match="max_connections"):
        s.on_status(st("max_connections", "Maximum number of connections exceeded"))


def test_errors_before_streaming_end_the_session():
    with pytest.raises(SessionError, match="auth_timeout"):
        PolygonSession("K", "T.*").on_status(st("auth_timeout"))
    s = PolygonSession("K", "T.*")
    s.on_status(st("auth_success"))
    s.on_status(st("success"))
    assert s.on_status(st("error", "something")) == []  # logged, not fatal while streaming


def test_key_never_in_repr():
    assert "SECRET" not in repr(PolygonSession("SECRET", "T.*"))

"""Disconnect causes: one spelling, and a TLS failure is ``tls`` whichever side decrypts."""

from __future__ import annotations

import errno
import json
import ssl

import pytest

from balancer import ktls
from balancer.causes import Cause, read_failure
from balancer.config import TlsMode, TlsRequest
from balancer.stats import Stats


@pytest.mark.parametrize("error", [
    ktls.KtlsAlertError(40),  # handshake_failure, after the hand-off
    ktls.KtlsAlertError(20),  # bad_record_mac
    ktls.KtlsRecordError("kernel TLS rejected a record from the server: EBADMSG"),
    ktls.KtlsKeyUpdateError("server sent a TLS 1.3 KeyUpdate"),
    ktls.KtlsProtocolError("unexpected TLS record type 22 after the hand-off"),
    ssl.SSLError(1, "[SSL: DECRYPTION_FAILED_OR_BAD_RECORD_MAC]"),
    ssl.SSLEOFError(8, "EOF occurred in violation of protocol"),
], ids=lambda e: type(e).__name__)
def test_tls_failures_are_tls_over_kernel_and_userspace_tls(error: OSError) -> None:
    # kTLS errors are OSErrors: before the fix they fell into the "connection lost" branch.
    assert isinstance(error, OSError)
    assert read_failure(error) is Cause.TLS


@pytest.mark.parametrize("error", [
    ConnectionResetError(errno.ECONNRESET, "Connection reset by peer"),
    BrokenPipeError(errno.EPIPE, "Broken pipe"),
    OSError(errno.ETIMEDOUT, "Connection timed out"),
    OSError(errno.EBADMSG, "Bad message"),  # same errno as a kTLS record error, but plain TCP
], ids=lambda e: type(e).__name__ + str(e.errno))
def test_other_socket_errors_are_resets(error: OSError) -> None:
    assert read_failure(error) is Cause.RESET


def test_the_stats_keep_the_plain_names() -> None:
    stats = Stats()
    stats.disconnects[Cause.TLS] += 2
    stats.disconnects[Cause.AUTH_FAILED] += 1
    snapshot = stats.snapshot()
    assert snapshot["disconnects"] == {"tls": 2, "auth_failed": 1}
    assert all(type(k) is str for k in snapshot["disconnects"])
    assert json.loads(json.dumps(snapshot))["disconnects"] == {"tls": 2, "auth_failed": 1}
    assert stats.disconnects["tls"] == 2  # members are their strings


def test_the_names_are_the_documented_ones() -> None:
    assert sorted(Cause) == sorted([
        "connect", "timeout", "tls", "reset", "eof", "handshake", "close", "shutdown",
        "protocol", "badjson", "status", "unread", "memory", "auth_failed", "evicted"])


def test_every_cause_is_documented() -> None:
    import pathlib

    docs = "".join(p.read_text() for p in [pathlib.Path(__file__).parents[2] / "README.md",
                                            *pathlib.Path(__file__).parents[2].glob("docs/*.md")])
    assert [c for c in Cause if f"`{c}`" not in docs] == []


def test_requested_and_chosen_tls_are_different_types() -> None:
    assert [m.value for m in TlsRequest] == ["auto", "ktls", "userspace"]
    assert [m.value for m in TlsMode] == ["none", "userspace", "ktls"]
    assert TlsRequest.KTLS == TlsMode.KTLS == "ktls"  # same spelling on the wire and in stats
    assert TlsRequest.AUTO not in set(TlsMode)

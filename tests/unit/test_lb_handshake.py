import base64

import pytest

from balancer.handshake import (
    HandshakeError,
    accept_for,
    build_request,
    check_response,
    new_key,
    parse_response_head,
)

KEY = "dGhlIHNhbXBsZSBub25jZQ=="  # RFC 6455 section 1.3


def test_accept_matches_rfc_6455_example():
    assert accept_for(KEY) == "s3pPLMBiTxaQ9kYGzzhZRbK+xOo="


def test_new_key_is_16_random_bytes():
    keys = {new_key() for _ in range(50)}
    assert len(keys) == 50
    assert all(len(base64.b64decode(k)) == 16 for k in keys)


def test_request():
    request = build_request("localhost:8765", "/stocks", KEY, "ua/1")
    lines = request.decode().split("\r\n")
    assert lines[0] == "GET /stocks HTTP/1.1"
    assert "Host: localhost:8765" in lines
    assert "Upgrade: websocket" in lines and "Connection: Upgrade" in lines
    assert f"Sec-WebSocket-Key: {KEY}" in lines and "Sec-WebSocket-Version: 13" in lines
    assert request.endswith(b"\r\n\r\n")


def reply(status="101 Switching Protocols", **headers):
    base = {"Upgrade": "websocket", "Connection": "Upgrade", "Sec-WebSocket-Accept": accept_for(KEY)}
    base.update({k.replace("_", "-"): v for k, v in headers.items()})
    head = f"HTTP/1.1 {status}\r\n" + "".join(f"{k}: {v}\r\n" for k, v in base.items() if v is not None)
    return (head + "\r\n").encode()


def test_valid_reply_and_leftover_bytes():
    data = reply() + b"\x81\x02hi"
    response, consumed = parse_response_head(data)
    check_response(response, KEY)
    assert data[consumed:] == b"\x81\x02hi"


def test_incomplete_head_waits():
    assert parse_response_head(reply()[:-3]) is None


def test_case_insensitive_and_token_list():
    check_response(parse_response_head(reply(Upgrade="WebSocket", Connection="keep-alive, Upgrade"))[0], KEY)


@pytest.mark.parametrize(
    ("data", "message"),
    [
        (reply("200 OK"), "200 OK"),
        (reply("403 Forbidden"), "403 Forbidden"),
        (reply(Upgrade="h2c"), "Upgrade"),
        (reply(Upgrade=None), "Upgrade"),
        (reply(Connection="close"), "Connection"),
        (reply(Sec_WebSocket_Accept="wrong"), "Sec-WebSocket-Accept"),
        (reply(Sec_WebSocket_Accept=None), "Sec-WebSocket-Accept"),
        (reply(Sec_WebSocket_Extensions="permessage-deflate"), "extensions"),
    ],
)
def test_bad_replies_name_the_problem(data, message):
    with pytest.raises(HandshakeError, match=message):
        check_response(parse_response_head(data)[0], KEY)


def test_not_http():
    with pytest.raises(HandshakeError, match="not an HTTP response"):
        parse_response_head(b"SSH-2.0-OpenSSH\r\n\r\n")


def test_head_too_long():
    with pytest.raises(HandshakeError, match="longer than"):
        parse_response_head(b"HTTP/1.1 101 x\r\n" + b"X: y\r\n" * 4000)

import pytest

from balancer.url import URLError, parse_url


@pytest.mark.parametrize(
    ("text", "tls", "host", "port", "resource", "host_header"),
    [
        ("wss://socket.polygon.io/stocks", True, "socket.polygon.io", 443, "/stocks", "socket.polygon.io"),
        ("ws://127.0.0.1:9943/dev-replay-api", False, "127.0.0.1", 9943, "/dev-replay-api", "127.0.0.1:9943"),
        ("wss://localhost:8080/stocks?x=1", True, "localhost", 8080, "/stocks?x=1", "localhost:8080"),
        ("ws://[::1]:80", False, "::1", 80, "/", "[::1]"),
        ("WSS://EXAMPLE.com:443/a", True, "example.com", 443, "/a", "example.com"),
        ("wss://h:80/x", True, "h", 80, "/x", "h:80"),  # TLS iff wss, on any port
    ],
)
def test_parse(text, tls, host, port, resource, host_header):
    url = parse_url(text)
    assert (url.tls, url.host, url.port, url.resource, url.host_header) == (
        tls, host, port, resource, host_header)


@pytest.mark.parametrize(
    ("text", "fragment"),
    [
        ("http://x/stocks", "scheme"),
        ("socket.polygon.io/stocks", "scheme"),
        ("ws:///stocks", "no host"),
        ("ws://u:p@h/stocks", "credentials"),
        ("ws://h/stocks#frag", "fragment"),
        ("ws://h:99999/", "invalid"),
        ("ws://h:0/", "port 0"),
    ],
)
def test_rejects(text, fragment):
    with pytest.raises(URLError, match=fragment):
        parse_url(text)


@pytest.mark.parametrize("text", [
    "SECRETKEY123", "wss://user:SECRETKEY123@h/stocks", "ws://SECRETKEY123:99999/",
    "SECRETKEY123://h/", "ws://h/SECRETKEY123#SECRETKEY123",
])
def test_an_error_never_holds_the_url_text(text):
    """Issue 11 item 7: the argument could be the key given in URL's place, or carry it."""
    with pytest.raises(URLError) as info:
        parse_url(text)
    assert "SECRETKEY123" not in str(info.value)
    assert str(info.value).startswith("URL")

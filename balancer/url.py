"""ws:// and wss:// URL parsing: TLS iff the scheme is wss, on any port."""

from __future__ import annotations

from dataclasses import dataclass
from urllib.parse import urlsplit


class URLError(ValueError):
    """The URL cannot be used for a websocket connection. The message never holds the URL's
    text: the argument could be the key given in the wrong place, or hold credentials."""


@dataclass(frozen=True, slots=True)
class WebSocketURL:
    tls: bool
    host: str  # without brackets, also for IPv6 literals
    port: int
    resource: str  # path plus query, never empty

    @property
    def host_header(self) -> str:
        """The Host header value: brackets for IPv6, port only when not the default."""
        host = f"[{self.host}]" if ":" in self.host else self.host
        default = 443 if self.tls else 80
        return host if self.port == default else f"{host}:{self.port}"

    def __str__(self) -> str:
        scheme = "wss" if self.tls else "ws"
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"{scheme}://{host}:{self.port}{self.resource}"


def parse_url(text: str) -> WebSocketURL:
    try:
        parts = urlsplit(text)
        port = parts.port
    except ValueError:
        raise URLError("URL: invalid (a bad port or syntax)") from None
    scheme = parts.scheme.lower()
    if scheme not in ("ws", "wss"):
        raise URLError("URL: the scheme must be ws or wss")
    if not parts.hostname:
        raise URLError("URL: no host")
    if parts.username is not None or parts.password is not None:
        raise URLError("URL: credentials in the URL are not supported (give the key as KEY)")
    if parts.fragment:
        raise URLError("URL: a websocket URL cannot have a #fragment")
    tls = scheme == "wss"
    if port is None:
        port = 443 if tls else 80
    if port == 0:
        raise URLError("URL: port 0 is not a valid destination")
    resource = parts.path or "/"
    if parts.query:
        resource += "?" + parts.query
    return WebSocketURL(tls=tls, host=parts.hostname, port=port, resource=resource)

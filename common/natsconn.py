"""Connecting to NATS: URLs, credentials files and TLS, with no secret in argv or logs.

`--nats` takes `nats://host:port` or `tls://host:port` (comma-separated for a cluster). A
user, password or token inside the URL would sit in argv for every `ps` to read, so it is
refused: secrets come from files (`--creds` a JWT + seed `.creds` file, `--nkey` a seed file).
`--cafile` verifies the server; `tls://` without it uses the system's trust store.
"""

from __future__ import annotations

import argparse
import logging
import os
import ssl
from collections.abc import Callable
from dataclasses import dataclass
from urllib.parse import urlsplit

from common.jsapi import APIError
from common.natsclient import Client

log = logging.getLogger("nats")


@dataclass(frozen=True)
class NatsOptions:
    servers: list[str]
    creds: str | None = None
    nkey: str | None = None
    cafile: str | None = None

    @property
    def tls(self) -> bool:
        return self.cafile is not None or any(s.startswith("tls://") for s in self.servers)


def parse_servers(text: str) -> list[str]:
    servers = []
    for item in text.split(","):
        item = item.strip()
        parts = urlsplit(item)
        if parts.scheme not in ("nats", "tls"):
            raise ValueError(f"bad NATS URL {item!r}: nats://HOST:PORT or tls://HOST:PORT")
        if parts.username is not None or parts.password is not None:
            raise ValueError("a user, password or token in the NATS URL would be visible in argv: "
                             "use --creds FILE or --nkey FILE")
        if not parts.hostname:
            raise ValueError(f"bad NATS URL {item!r}: no host")
        servers.append(item)
    return servers


def add_arguments(parser: argparse.ArgumentParser) -> None:
    group = parser.add_argument_group("NATS")
    group.add_argument("--nats", default="nats://127.0.0.1:4222", metavar="URL[,URL...]",
                       help="server URL(s), nats:// or tls:// (default nats://127.0.0.1:4222)")
    group.add_argument("--creds", metavar="FILE", help="NATS credentials file (JWT and nkey seed)")
    group.add_argument("--nkey", metavar="FILE", help="file holding an nkey seed")
    group.add_argument("--cafile", metavar="FILE", help="CA bundle to verify the server's certificate")


def options_from(args: argparse.Namespace) -> NatsOptions:
    servers = parse_servers(args.nats)
    for name in ("creds", "nkey", "cafile"):
        path = getattr(args, name)
        if path is not None and not os.path.isfile(path):
            raise ValueError(f"--{name} {path!r} is not a readable file")
    if args.creds and args.nkey:
        raise ValueError("--creds and --nkey exclude each other")
    return NatsOptions(servers, args.creds, args.nkey, args.cafile)


def client(options: NatsOptions, name: str, *, on_disconnect: Callable[[], None] | None = None,
           on_reconnect: Callable[[], None] | None = None,
           on_handler_error: Callable[[BaseException], None] | None = None) -> Client:
    """A client named ``name`` (the server's connz shows it) that waits out any outage; call
    ``await client.connect()``. Our own close is no outage and is not logged as one."""
    context = ssl.create_default_context(cafile=options.cafile) if options.tls else None
    return Client(options.servers, name=name, tls=context, creds=options.creds, nkey=options.nkey,
                  on_disconnect=on_disconnect, on_reconnect=on_reconnect,
                  on_handler_error=on_handler_error, log=log)


async def connect(options: NatsOptions, name: str, on_reconnect: Callable[[], None] | None = None) -> Client:
    """`client()`, connected."""
    return await client(options, name, on_reconnect=on_reconnect).connect()


# JetStream API errors that a cluster being formed, or electing a leader, answers for a while:
# JSClusterIncompleteErr, JSClusterNoPeersErr, JSClusterNotAvailErr ("JetStream system
# temporarily unavailable"), JSClusterNotLeaderErr, JSInsufficientResourcesErr
PASSING_ERRORS = frozenset({10004, 10005, 10008, 10009, 10023})


def refusal(exc: BaseException) -> str | None:
    """What a JetStream API answer refused, if asking again is not expected to change it; None
    for what can pass: no answer at all (a timeout, no responders, a connection being
    re-established), a 503, or one of PASSING_ERRORS. Every other API error is a refusal
    (a stream configured otherwise, "replicas > 1 not supported in non-clustered mode")."""
    if not isinstance(exc, APIError) or exc.code == 503 or exc.err_code in PASSING_ERRORS:
        return None
    return f"{exc.description or 'refused'} (code {exc.code}, error {exc.err_code})"

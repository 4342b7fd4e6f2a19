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
from typing import Any
from urllib.parse import urlsplit

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


def connect_kwargs(options: NatsOptions, name: str) -> dict[str, Any]:
    kwargs: dict[str, Any] = {
        "servers": options.servers,
        "name": name,
        "max_reconnect_attempts": -1,  # an outage is waited out, never given up on
        "reconnect_time_wait": 0.25,
        "connect_timeout": 2,
        "allow_reconnect": True,
        "pending_size": 64 * 1024 * 1024,
    }
    if options.creds:
        kwargs["user_credentials"] = options.creds
    if options.nkey:
        kwargs["nkeys_seed"] = options.nkey
    if options.tls:
        context = ssl.create_default_context(cafile=options.cafile)
        kwargs["tls"] = context
    return kwargs


async def connect(options: NatsOptions, name: str, on_reconnect: Callable[[], None] | None = None) -> Any:
    """A client named ``name`` to the server (its connz) that waits out any outage (logged once
    per disconnection, not on our own close); ``on_reconnect`` is called each time it is
    connected again."""
    import nats

    client: list[Any] = []

    async def disconnected() -> None:
        if client and client[0].is_closed:
            return  # our own close: not an outage
        log.warning("disconnected from NATS; waiting for it (nothing is dropped)")

    async def reconnected() -> None:
        log.warning("reconnected to NATS")
        if on_reconnect is not None:
            on_reconnect()

    async def error(exc: Exception) -> None:
        log.warning("NATS: %s", type(exc).__name__ if not str(exc) else str(exc)[:200])

    client.append(await nats.connect(**connect_kwargs(options, name), disconnected_cb=disconnected,
                                     reconnected_cb=reconnected, error_cb=error))
    return client[0]


# JetStream API errors that a cluster being formed, or electing a leader, answers for a while:
# JSClusterIncompleteErr, JSClusterNoPeersErr, JSClusterNotAvailErr ("JetStream system
# temporarily unavailable"), JSClusterNotLeaderErr, JSInsufficientResourcesErr
PASSING_ERRORS = frozenset({10004, 10005, 10008, 10009, 10023})


def refusal(exc: BaseException) -> str | None:
    """What a JetStream API answer refused, if asking again is not expected to change it; None
    for what can pass: no answer at all (a timeout, no responders, a connection being
    re-established), a 503, or one of PASSING_ERRORS. Every other API error is a refusal
    (a stream configured otherwise, "replicas > 1 not supported in non-clustered mode")."""
    from nats.js.errors import APIError

    if not isinstance(exc, APIError) or exc.code == 503 or exc.err_code in PASSING_ERRORS:
        return None
    return f"{exc.description or 'refused'} (code {exc.code}, error {exc.err_code})"

"""simulate: a local Polygon-compatible websocket feed with faults and a ledger."""

from __future__ import annotations

import argparse
import os
import sys
import time
from datetime import datetime
from typing import Any

from common.units import format_duration
from common.version import add_version_option
from simulator.config import FAULT_CHOICES, Settings, TLSSettings
from simulator.observe import parse_listen
from simulator.pacing import auto_batch
from simulator.units import (
    format_rate,
    parse_count,
    parse_duration,
    parse_positive_duration,
    parse_rate,
    parse_speed,
)

SEEDED_CLOCK_START = "2025-01-02T09:30:00-05:00"  # a session open, so seeded runs repeat exactly

EPILOG = """\
examples:
  simulate --rate 500k/s --drop-every 30s --fault random --ledger ledger.json
      a soak feed; pass the printed URL and CA file to lb (--cafile)
  simulate --no-tls --rate max --batch 1000 --trades 2M
      as fast as the client reads, 1000 trades per frame, then exit
  simulate --replay recorded.jsonl.gz --speed 10x --loop
      replay lb --record output (or a Polygon trades flat file) at 10x its recorded pace

The market runs only while at least one client is subscribed to trades. Exit status: 0 on
SIGINT/SIGTERM or at the end of --duration/--trades/the replay; 2 for bad arguments or a
malformed replay file (the message names the line).
"""


def _arg(parser_type: Any) -> Any:
    def convert(text: str) -> Any:
        try:
            return parser_type(text)
        except ValueError as exc:
            raise argparse.ArgumentTypeError(str(exc)) from None
    convert.__name__ = parser_type.__name__.replace("parse_", "")
    return convert


def _clock_start(text: str) -> int:
    if text.isdigit():
        return int(text)
    try:
        moment = datetime.fromisoformat(text)
    except ValueError:
        raise ValueError(f"bad time {text!r}: expected epoch milliseconds or ISO 8601") from None
    if moment.tzinfo is None:
        raise ValueError(f"bad time {text!r}: give a UTC offset, e.g. {SEEDED_CLOCK_START}")
    return int(moment.timestamp() * 1000)


def _keys(text: str) -> frozenset[str]:
    keys = frozenset(k.strip() for k in text.split(",") if k.strip())
    if not keys:
        raise ValueError("--keys needs at least one key")
    return keys


D = Settings()  # the defaults, in one place (simulator/config.py)
TLS_D = TLSSettings("")
_dur = format_duration


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="simulate", description=__doc__, epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter)
    add_version_option(p)
    server = p.add_argument_group("server")
    server.add_argument("--host", default=D.host, help=f"address to listen on ({D.host})")
    server.add_argument("--port", type=int, default=D.port, help="port (0: pick a free one)")
    server.add_argument("--no-tls", action="store_true", help="serve ws:// instead of wss://")
    server.add_argument("--certs", metavar="DIR", help="where the CA and server certificate are "
                        "made once and reused (default: ~/.cache/trade-balancer/simulate-certs)")
    server.add_argument("--cert-type", choices=("rsa", "ecdsa"), default=TLS_D.cert_type,
                        help=f"server key type ({TLS_D.cert_type}); ecdsa for ECDHE-ECDSA TLS 1.2 suites")
    server.add_argument("--tls-version", choices=("1.2", "1.3"),
                        help="allow only this TLS version")
    server.add_argument("--ciphers", metavar="STR",
                        help="OpenSSL cipher string for TLS 1.2, e.g. ECDHE-RSA-AES128-GCM-SHA256")
    server.add_argument("--tls13-ciphersuites", metavar="LIST",
                        help="colon-separated TLS 1.3 suites, e.g. TLS_CHACHA20_POLY1305_SHA256 "
                        "(applied through an OpenSSL config: the process restarts itself once)")
    server.add_argument("--ready-file", metavar="PATH",
                        help='once listening, write {"url", "cafile", "pid"} here (atomically)')
    server.add_argument("--ledger", metavar="PATH",
                        help="write the ledger of what was sent (JSON) here: after every "
                        "connection and at exit")
    proto = p.add_argument_group("protocol")
    proto.add_argument("--keys", type=_arg(_keys), metavar="K1,K2",
                       help="API keys to accept (default: any non-empty key)")
    proto.add_argument("--max-connections", type=int, default=D.max_connections, metavar="N",
                       help="connections per key; a newer one evicts the oldest with a "
                       f"max_connections status and close 1008 ({D.max_connections})")
    proto.add_argument("--auth-timeout", type=_arg(parse_positive_duration), default=D.auth_timeout,
                       metavar="DUR",
                       help=f"auth_timeout and close if no auth by then ({_dur(D.auth_timeout)})")
    proto.add_argument("--ping-interval", type=_arg(parse_duration), default=D.ping_interval,
                       metavar="DUR",
                       help=f"send a ping this often, 0 for never ({_dur(D.ping_interval)})")
    proto.add_argument("--ping-timeout", type=_arg(parse_positive_duration), default=D.ping_timeout,
                       metavar="DUR",
                       help=f"close 1011 if the pong is later than this ({_dur(D.ping_timeout)})")
    proto.add_argument("--close-timeout", type=_arg(parse_positive_duration), default=D.close_timeout,
                       metavar="DUR",
                       help=f"wait this long for the peer's close reply ({_dur(D.close_timeout)})")
    market = p.add_argument_group("synthetic market")
    market.add_argument("--rate", type=_arg(parse_rate), default=D.rate, metavar="RATE",
                        help="trades per second: 500k/s, 2M/s, 1000/s; max: as fast as the "
                        f"client reads (default {format_rate(D.rate)}; a replay defaults to its "
                        "recorded pace)")
    market.add_argument("--profile", choices=("flat", "open"), default=D.profile,
                        help="flat: a constant rate; open: quiet, a burst to --rate, decay")
    market.add_argument("--profile-period", type=_arg(parse_positive_duration),
                        default=D.profile_period, metavar="DUR",
                        help=f"length of the open profile's shape ({_dur(D.profile_period)})")
    market.add_argument("--batch", type=_arg(parse_count), metavar="N",
                        help="trades per frame (default: rate x --frame-interval, 1 to 2000; "
                        "1000 with --rate max)")
    market.add_argument("--frame-interval", type=_arg(parse_positive_duration),
                        default=D.frame_interval, metavar="DUR",
                        help=f"time one frame covers when --batch is not given "
                             f"({_dur(D.frame_interval)})")
    market.add_argument("--symbols", type=_arg(parse_count), default=D.symbols, metavar="N",
                        help=f"tickers, most active first ({D.symbols})")
    market.add_argument("--seed", type=int, help="makes the market byte-for-byte reproducible "
                        "(default: random, recorded in the ledger)")
    market.add_argument("--tape-size", type=_arg(parse_count), default=D.tape_size, metavar="N",
                        help=f"trades pre-rendered and then repeated with new q and t "
                             f"({D.tape_size})")
    market.add_argument("--clock-start", type=_arg(_clock_start), metavar="TIME",
                        help="market time of the first trade, epoch ms or ISO 8601 (now; "
                        f"with --seed, {SEEDED_CLOCK_START})")
    market.add_argument("--stamp-ids", action="store_true",
                        help="every trade's i is time.monotonic_ns() when its frame is sent")
    market.add_argument("--duration", type=_arg(parse_positive_duration), metavar="DUR",
                        help="end the run after this long (60s, 5m)")
    market.add_argument("--trades", type=_arg(parse_count), metavar="N",
                        help="end the run after N trades")
    replay = p.add_argument_group("replay")
    replay.add_argument("--replay", metavar="FILE",
                        help="replay lb --record JSON lines or a Polygon trades CSV flat file "
                        "(plain or gzip) instead of the synthetic market")
    replay.add_argument("--replay-format", choices=("auto", "jsonl", "csv"), default="auto",
                        help="auto: csv if the first line is the flat-file header (auto)")
    replay.add_argument("--speed", type=_arg(parse_speed), metavar="10x",
                        help="replay at the recorded pace (by t) times this (default 1x "
                        "unless --rate is given)")
    replay.add_argument("--loop", action="store_true",
                        help="start the file again at its end, q and t shifted to keep rising")
    faults = p.add_argument_group("faults")
    faults.add_argument("--drop-every", type=_arg(parse_positive_duration), metavar="DUR",
                        help="apply --fault to every live connection this often")
    faults.add_argument("--fault", choices=FAULT_CHOICES, default=D.fault,
                        help="reset (TCP RST), close (1001/1011), stall (silence, no pongs), "
                        "tls-close (close_notify, no websocket close), truncate (half a frame, "
                        "RST), garbage (a malformed frame), badjson (a non-array payload), "
                        f"random (one of these per drop) ({D.fault})")
    faults.add_argument("--refuse-for", type=_arg(parse_duration), default=D.refuse_for, metavar="DUR",
                        help="after each drop, keep the port closed this long (an outage)")
    faults.add_argument("--drain-timeout", type=_arg(parse_duration), default=D.drain_timeout,
                        metavar="DUR",
                        help="before a fault, eviction or shutdown, wait this long at most for "
                        f"the peer to acknowledge every byte sent ({_dur(D.drain_timeout)})")
    faults.add_argument("--fault-wait", type=_arg(parse_positive_duration), default=D.fault_wait,
                        metavar="DUR", help="after garbage/badjson, wait this long at most "
                        f"for the peer to close ({_dur(D.fault_wait)})")
    out = p.add_argument_group("output")
    out.add_argument("--stats-interval", type=_arg(parse_duration), default=D.stats_interval,
                     metavar="DUR",
                     help=f"a stats line on stderr this often, 0 for none ({_dur(D.stats_interval)})")
    out.add_argument("--stats-file", metavar="PATH",
                     help="rewrite PATH (JSON, atomically) every second with the live figures: "
                     "rate, clients, faults (what lb-top shows)")
    out.add_argument("--metrics", type=_arg(parse_listen), metavar="HOST:PORT",
                     help="serve Prometheus metrics at http://HOST:PORT/metrics (bare PORT: "
                     "127.0.0.1; off by default)")
    out.add_argument("-q", "--quiet", action="store_true", help="only errors and the summary")
    return p


def settings_from(ns: argparse.Namespace, parser: argparse.ArgumentParser) -> Settings:
    if ns.profile == "open" and ns.rate is None:
        parser.error("--profile open needs a numeric --rate")
    if ns.tls13_ciphersuites is not None and ns.tls_version == "1.2":
        parser.error("--tls13-ciphersuites has no effect with --tls-version 1.2")
    if ns.no_tls and (ns.tls_version or ns.ciphers or ns.tls13_ciphersuites):
        parser.error("TLS options make no sense with --no-tls")
    speed = ns.speed
    if ns.replay is not None and speed is None and not ns.rate_given:
        speed = 1.0
    if ns.speed is not None and ns.replay is None:
        parser.error("--speed applies to --replay")
    if ns.speed is not None and ns.rate_given:
        parser.error("give --rate or --speed for a replay, not both")
    seed = ns.seed if ns.seed is not None else int.from_bytes(os.urandom(4), "big")
    if ns.clock_start is not None:
        clock_start = ns.clock_start
    elif ns.seed is not None:
        clock_start = _clock_start(SEEDED_CLOCK_START)
    else:
        clock_start = int(time.time() * 1000)
    if ns.batch is not None:
        batch = ns.batch
    elif ns.replay is not None and speed is not None:
        batch = 1000  # a recorded pace has no single rate: frames take what is due, up to this
    else:
        batch = auto_batch(ns.rate, ns.frame_interval)
    tls = None
    if not ns.no_tls:
        from simulator.tlsconfig import default_certs_dir, parse_tls13_suites
        suites = parse_tls13_suites(ns.tls13_ciphersuites) if ns.tls13_ciphersuites else None
        tls = TLSSettings(ns.certs or default_certs_dir(), ns.cert_type, ns.tls_version,
                          ns.ciphers, suites)
    return Settings(
        host=ns.host, port=ns.port, tls=tls, ready_file=ns.ready_file, ledger=ns.ledger,
        keys=ns.keys, max_connections=ns.max_connections, auth_timeout=ns.auth_timeout,
        ping_interval=ns.ping_interval or None, ping_timeout=ns.ping_timeout,
        close_timeout=ns.close_timeout, rate=ns.rate, profile=ns.profile,
        profile_period=ns.profile_period, batch=batch, frame_interval=ns.frame_interval,
        symbols=ns.symbols, seed=seed, tape_size=ns.tape_size, clock_start_ms=clock_start,
        stamp_ids=ns.stamp_ids, duration=ns.duration, trades=ns.trades, replay=ns.replay,
        replay_format=None if ns.replay_format == "auto" else ns.replay_format, speed=speed,
        loop=ns.loop, drop_every=ns.drop_every, fault=ns.fault, refuse_for=ns.refuse_for,
        drain_timeout=ns.drain_timeout, fault_wait=ns.fault_wait,
        stats_interval=ns.stats_interval, stats_file=ns.stats_file, metrics=ns.metrics,
        quiet=ns.quiet)


def main(argv: list[str] | None = None) -> int:
    args = sys.argv[1:] if argv is None else argv
    parser = build_parser()
    ns = parser.parse_args(args)
    ns.rate_given = any(a == "--rate" or a.startswith("--rate=") for a in args)
    try:
        settings = settings_from(ns, parser)
    except ValueError as exc:
        parser.error(str(exc))
    from simulator import tlsconfig

    tls = settings.tls
    restarted = bool(os.environ.get(tlsconfig.RESTARTED_ENV))
    if tls is not None and tls.tls13_suites is not None and not restarted:
        tlsconfig.restart_with_tls13_suites(tls.tls13_suites, tls.certs_dir, args)
    return serve(settings)


def serve(settings: Settings) -> int:
    from simulator import server, tlsconfig
    from simulator.replay import ReplayError, ReplaySource

    context = cafile = None
    if settings.tls is not None:
        t = settings.tls
        try:
            files = tlsconfig.ensure_certs(t.certs_dir, t.cert_type)
            context = tlsconfig.server_context(files, t.version, t.ciphers, t.tls13_suites)
        except (OSError, ValueError) as exc:
            print(f"simulate: {exc}", file=sys.stderr)
            return 2
        cafile = files.cafile
    if settings.replay is not None:
        try:  # a malformed start of file is reported before listening
            probe = ReplaySource(settings.replay, file_format=settings.replay_format)
            read = 0
            while read < 1000 and (batch := probe.next_batch(1000 - read)) is not None:
                read += batch.count
        except (OSError, ReplayError) as exc:
            print(f"simulate: {exc}", file=sys.stderr)
            return 2
    try:
        return server.run(settings, context, cafile)
    except KeyboardInterrupt:
        return 130

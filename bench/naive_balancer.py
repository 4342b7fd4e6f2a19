"""The thing to beat: a naive Python balancer (websockets + orjson, one pipe write per trade).

The way a Python user writes it first (issue 7's "naive Python" line): parse each message
with orjson, re-serialise each trade, hash its symbol (cached) and write it to its pipe in
one os.write per trade. Same command line as lb, for the benchmark only.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import ssl
import sys

import orjson
import websockets


def fnv1a_64(data: bytes) -> int:
    h = 0xCBF29CE484222325
    for b in data:
        h = ((h ^ b) * 0x100000001B3) & 0xFFFFFFFFFFFFFFFF
    return h


async def run(args: argparse.Namespace) -> None:
    npipes = int(args.npipes)
    pipes = [os.pipe() for _ in range(npipes)]
    reads = [r for r, _ in pipes]
    writes = [w for _, w in pipes]
    for fd in reads:
        os.set_inheritable(fd, True)
    pid = os.fork()
    if pid == 0:
        os.chdir(args.workdir)
        for fd in writes:
            os.close(fd)
        os.execvp(args.exe, [args.exe, *args.args, *map(str, reads)])
    for fd in reads:
        os.close(fd)
    context = None
    if args.url.startswith("wss:"):
        context = ssl.create_default_context(cafile=args.cafile)
    pipe_of: dict[str, int] = {}
    async with websockets.connect(args.url, ssl=context, max_size=None, compression=None) as ws:
        await ws.send(json.dumps({"action": "auth", "params": args.key}))
        await ws.send(json.dumps({"action": "subscribe", "params": "T.*"}))
        async for message in ws:
            for event in orjson.loads(message):
                symbol = event.get("sym")
                if symbol is None:
                    continue
                pipe = pipe_of.get(symbol)
                if pipe is None:
                    pipe = pipe_of[symbol] = (fnv1a_64(symbol.encode()) >> 32) % npipes
                data = orjson.dumps(event)
                os.write(writes[pipe], len(data).to_bytes(4, "little") + data)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--cafile")
    p.add_argument("key")
    p.add_argument("url")
    p.add_argument("npipes")
    p.add_argument("workdir")
    p.add_argument("exe")
    p.add_argument("args", nargs=argparse.REMAINDER)
    args = p.parse_args()
    try:
        asyncio.run(run(args))
    except (KeyboardInterrupt, websockets.ConnectionClosed):
        pass
    sys.exit(0)


if __name__ == "__main__":
    main()

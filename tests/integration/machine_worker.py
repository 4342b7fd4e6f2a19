"""Test worker for issue 11 (what lb owns on its machine). ``machine_worker.py MODE FD...``;
it writes what it saw as JSON files in its working directory (WORKDIR).

- ``report``: writes report_<pid>.json (argv, open fds, environment names, RLIMIT_CORE),
  then reads its pipes to EOF.
- ``escape``: first run: forks ``holder`` (setsid(), keeps the pipes, reads them slowly) and
  ``loose`` (setsid(), closes the pipes, sleeps), writes escapees.json, exits 1. Later runs:
  writes second_<pid>.json (was ``holder`` still alive when this one started), then reads
  its pipes to EOF.
- ``deaf``: ignores SIGTERM, never reads, forks a same-group child (no PDEATHSIG) that
  sleeps; writes deaf.json with both pids; sleeps.
- ``abandon``: closes its pipes (first run only) and sleeps; later runs read to EOF.
- ``family``: forks a same-group child without PDEATHSIG that sleeps (family.json), then
  reads its pipes to EOF.
"""

from __future__ import annotations

import json
import os
import resource
import selectors
import signal
import sys
import time


def write(name: str, data: object) -> None:
    tmp = f"{name}.tmp"
    with open(tmp, "w") as f:
        json.dump(data, f)
    os.replace(tmp, name)


def alive(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            return f.read().rsplit(b")", 1)[1].split()[0] != b"Z"
    except OSError:
        return False


def drain(fds: list[int]) -> None:
    selector = selectors.DefaultSelector()
    for fd in fds:
        selector.register(fd, selectors.EVENT_READ)
    while selector.get_map():
        for key, _ in selector.select():
            if not os.read(key.fd, 1 << 20):
                selector.unregister(key.fd)


def sleep_forever() -> None:
    while True:
        time.sleep(3600)


def report(fds: list[int]) -> None:
    write(f"report_{os.getpid()}.json", {
        "argv": sys.argv,
        "fds": sorted(int(n) for n in os.listdir("/proc/self/fd")),
        "env": sorted(os.environ),
        "core": list(resource.getrlimit(resource.RLIMIT_CORE)),
    })
    drain(fds)


def escape(fds: list[int]) -> None:
    if os.path.exists("escapees.json"):
        first = json.load(open("escapees.json"))  # noqa: SIM115
        write(f"second_{os.getpid()}.json", {"holder_alive": alive(first["holder"])})
        drain(fds)
        return
    pids = {}
    ready_r, ready_w = os.pipe()
    for role in ("holder", "loose"):
        pid = os.fork()
        if pid == 0:
            os.setsid()
            os.write(ready_w, b"x")  # out of the worker's group now
            os.close(ready_w)
            os.close(ready_r)
            if role == "loose":
                for fd in fds:
                    os.close(fd)
                sleep_forever()
            while True:  # the holder: reads lb's pipes a little at a time, forever
                for fd in fds:
                    os.set_blocking(fd, False)
                    try:
                        os.read(fd, 100)
                    except BlockingIOError:
                        pass
                time.sleep(0.01)
        pids[role] = pid
        os.read(ready_r, 1)  # wait for its setsid(): the worker may not exit before
    write("escapees.json", pids)
    os._exit(1)


def deaf(fds: list[int]) -> None:
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    child = os.fork()
    if child == 0:
        sleep_forever()
    write("deaf.json", {"worker": os.getpid(), "child": child})
    sleep_forever()


def abandon(fds: list[int]) -> None:
    if os.path.exists("abandoned.json"):
        write(f"second_{os.getpid()}.json", {})
        drain(fds)
        return
    for fd in fds:
        os.close(fd)
    write("abandoned.json", {"pid": os.getpid()})
    sleep_forever()


def family(fds: list[int]) -> None:
    child = os.fork()
    if child == 0:
        for fd in fds:
            os.close(fd)
        sleep_forever()
    write("family.json", {"worker": os.getpid(), "child": child})
    drain(fds)


def main() -> None:
    mode, fds = sys.argv[1], [int(a) for a in sys.argv[2:] if a.isdigit()]
    {"report": report, "escape": escape, "deaf": deaf, "abandon": abandon, "family": family}[mode](fds)


if __name__ == "__main__":
    main()

"""Test worker for the JetStream fault cases: reads every pipe one message at a time (header,
then payload) and appends each read's bytes at once to rec.<start ns>.<pid>.<pipe>.bin, so a
SIGKILL loses at most the bytes of the one read() in hand. Exits at EOF on every pipe."""

import os
import selectors
import sys
import time


def read_exactly(fd: int, n: int, out: int) -> bool:
    """The rest of a message, each read's bytes recorded at once; False at EOF."""
    while n:
        chunk = os.read(fd, n)
        if not chunk:
            return False
        os.write(out, chunk)
        n -= len(chunk)
    return True


def main() -> None:
    fds = [int(a) for a in sys.argv[1:]]
    stamp = time.monotonic_ns()
    outs = {fd: os.open(f"rec.{stamp}.{os.getpid()}.{i}.bin", os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
            for i, fd in enumerate(fds)}
    selector = selectors.DefaultSelector()
    for fd in fds:
        selector.register(fd, selectors.EVENT_READ)
    while selector.get_map():
        for key, _ in selector.select():
            fd, out = key.fd, outs[key.fd]
            header = b""
            while len(header) < 4:
                part = os.read(fd, 4 - len(header))
                if not part:
                    break
                os.write(out, part)
                header += part
            if len(header) < 4 or not read_exactly(fd, int.from_bytes(header, "little"), out):
                selector.unregister(fd)


if __name__ == "__main__":
    main()

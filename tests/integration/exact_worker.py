"""Test worker that reads one message at a time (4-byte header, then the payload) from a single
pipe and appends every byte it read to received.<pid>.bin at once, so a SIGKILL loses at most what
one read() took. Exits at EOF."""

import os
import sys


def read_exactly(fd: int, n: int, out: int) -> bytes:
    data = b""
    while len(data) < n:
        chunk = os.read(fd, n - len(data))
        if not chunk:
            return data
        os.write(out, chunk)
        data += chunk
    return data


def main() -> None:
    fd = int(sys.argv[-1])
    out = os.open(f"received.{os.getpid()}.bin", os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
    while True:
        header = read_exactly(fd, 4, out)
        if len(header) < 4:
            break
        if len(read_exactly(fd, int.from_bytes(header, "little"), out)) < int.from_bytes(header, "little"):
            break


if __name__ == "__main__":
    main()

"""Test worker for the JetStream fault cases: records every pipe's bytes, one message at a time
(header, then payload), into rec.<start ns>.<pid>.<pipe>.bin, moving them with splice(2) from
the pipe straight into the file: a byte leaves the pipe only as it enters the file, so a
SIGKILL at any instant loses nothing it had read (the file holds exactly what the pipe lost).
Exits at EOF on every pipe.

While the file `die-mid-message` exists in the working directory, the worker reads the header
and half the payload of its next message, removes the file and SIGKILLs itself: a death
inside a message, on purpose.
"""

import os
import selectors
import signal
import sys
import time

DIE_FLAG = "die-mid-message"
LOOK_EVERY = 32  # messages between two looks for the flag


def move(fd: int, out: int, n: int) -> int:
    """Splice up to n bytes of the pipe to the file; 0 at EOF."""
    return os.splice(fd, out, n)


def move_exactly(fd: int, out: int, n: int) -> bool:
    while n:
        moved = move(fd, out, n)
        if not moved:
            return False
        n -= moved
    return True


def main() -> None:
    fds = [int(a) for a in sys.argv[1:]]
    stamp = time.monotonic_ns()
    # no O_APPEND: splice(2) refuses files opened in append mode; each run has its own files
    outs = {fd: os.open(f"rec.{stamp}.{os.getpid()}.{i}.bin", os.O_RDWR | os.O_CREAT | os.O_TRUNC, 0o644)
            for i, fd in enumerate(fds)}
    sizes = dict.fromkeys(fds, 0)
    selector = selectors.DefaultSelector()
    for fd in fds:
        selector.register(fd, selectors.EVENT_READ)
    count = 0
    while selector.get_map():
        for key, _ in selector.select():
            fd, out = key.fd, outs[key.fd]
            if not move_exactly(fd, out, 4):
                selector.unregister(fd)
                continue
            length = int.from_bytes(os.pread(out, 4, sizes[fd]), "little")
            count += 1
            if count % LOOK_EVERY == 0 and os.path.exists(DIE_FLAG):
                move_exactly(fd, out, length // 2)
                os.unlink(DIE_FLAG)
                os.kill(os.getpid(), signal.SIGKILL)
            if not move_exactly(fd, out, length):
                selector.unregister(fd)
                continue
            sizes[fd] += 4 + length


if __name__ == "__main__":
    main()

"""Test worker: copies each pipe's raw bytes to pipe_<index>.bin in the working directory
until EOF on every pipe, then writes done.json. Knows nothing of the framing on purpose:
the test checks the bytes."""

import json
import os
import selectors
import sys


def main() -> None:
    fds = [int(a) for a in sys.argv[1:]]
    outputs = {fd: open(f"pipe_{i}.bin", "ab", buffering=0) for i, fd in enumerate(fds)}  # noqa: SIM115
    selector = selectors.DefaultSelector()
    for fd in fds:
        selector.register(fd, selectors.EVENT_READ)
    total = 0
    while selector.get_map():
        for key, _ in selector.select():
            data = os.read(key.fd, 1 << 20)
            if not data:
                selector.unregister(key.fd)
                continue
            outputs[key.fd].write(data)
            total += len(data)
    with open("done.json", "w") as f:
        json.dump({"bytes": total, "pid": os.getpid()}, f)


if __name__ == "__main__":
    main()

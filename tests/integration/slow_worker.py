"""Test worker: drains every pipe at full speed except pipe 0, which it reads at about
--rate bytes/s until the file named by --fast-file exists. Copies what it reads to
pipe_<i>.bin like dump_worker."""

import argparse
import os
import selectors
import time


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--rate", type=int, default=200_000)
    p.add_argument("--fast-file", required=True)
    p.add_argument("fds", nargs="+", type=int)
    args = p.parse_args()
    out = {fd: os.open(f"pipe_{i}.bin", os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
           for i, fd in enumerate(args.fds)}
    slow = args.fds[0]
    selector = selectors.DefaultSelector()
    for fd in args.fds:
        selector.register(fd, selectors.EVENT_READ)
    while selector.get_map():
        fast = os.path.exists(args.fast_file)
        for key, _ in selector.select(timeout=0.05):
            throttled = key.fd == slow and not fast
            data = os.read(key.fd, 4096 if throttled else 1 << 20)
            if not data:
                selector.unregister(key.fd)
                continue
            os.write(out[key.fd], data)
            if throttled:
                time.sleep(4096 / args.rate)


if __name__ == "__main__":
    main()

"""Run a command with transparent huge pages off for it (and what it runs):

    python -m harness.nothp nats-server -js -sd /var/lib/nats

`prctl(PR_SET_THP_DISABLE)` then `exec`: the command keeps this process (same pid, signals,
exit status). Debian's nats-server 2.9.10 is built with Go 1.19, whose heap asks the kernel for
huge pages (MADV_HUGEPAGE); on the machines this project is measured on that gave JetStream
20-40 ms stalls several times a second, and with THP off for the server its p99 from publish
to consumer fell from 23-25 ms to 7.7-9.1 ms (docs/jetstream.md, "nats-server and huge pages").
The other way is system-wide: `echo never > /sys/kernel/mm/transparent_hugepage/enabled`.
"""

from __future__ import annotations

import ctypes
import os
import sys

PR_SET_THP_DISABLE = 41


def disable_thp() -> None:
    libc = ctypes.CDLL(None, use_errno=True)
    if libc.prctl(PR_SET_THP_DISABLE, 1, 0, 0, 0) != 0:
        raise OSError(ctypes.get_errno(), "prctl(PR_SET_THP_DISABLE)")


def main(argv: list[str] | None = None) -> int:
    args = sys.argv[1:] if argv is None else argv
    if not args:
        print(__doc__.split("\n\n")[0], file=sys.stderr)
        return 2
    disable_thp()
    try:
        os.execvp(args[0], args)
    except OSError as exc:
        print(f"nothp: {args[0]}: {exc.strerror}", file=sys.stderr)
        return 127
    return 0  # pragma: no cover (exec does not return)


if __name__ == "__main__":
    sys.exit(main())

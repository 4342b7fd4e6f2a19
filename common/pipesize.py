"""A pipe's capacity: ask for a size, take the largest the kernel grants.

lb's pipes (balancer.pipes) and lb-bridge's look-ahead pipes (workers.bridge) both want a
large pipe and must live with less: above ``/proc/sys/fs/pipe-max-size`` (1 MiB by default)
an unprivileged process gets EPERM, and past the per-user page budget the kernel refuses
again. A refusal halves the request; the default 64 KiB pipe is the floor."""

from __future__ import annotations

import errno
import fcntl

F_SETPIPE_SZ = 1031
F_GETPIPE_SZ = 1032
MIN_PIPE_SIZE = 64 * 1024


def set_pipe_size(fd: int, requested: int) -> int:
    """Ask for ``requested`` bytes, halving until the kernel agrees; return the size obtained."""
    size = requested
    while size >= MIN_PIPE_SIZE:
        try:
            return fcntl.fcntl(fd, F_SETPIPE_SZ, size)
        except OSError as exc:
            if exc.errno not in (errno.EPERM, errno.EINVAL, errno.ENOMEM, errno.EBUSY):
                raise
            size //= 2
    return fcntl.fcntl(fd, F_GETPIPE_SZ)

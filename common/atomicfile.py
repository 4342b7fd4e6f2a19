"""Files other programs read while we rewrite them: readers see the old file or the new one.

The one writer behind lb's ``--stats-file``/``--ready-file``, simulate's ``--ready-file`` and
``--ledger``, and the handlers' and lb-pool's JSON reports. The bytes go to ``PATH.tmp.PID``
in the same directory (so the rename stays on one file system), which then replaces
``PATH``; if writing or renaming fails the temporary file is removed and the error raised,
and ``PATH`` keeps its old content. Created with mode 0666 less the umask, as ``open`` would.
No fsync: these are status files for live readers, rewritten up to once a second.
"""

from __future__ import annotations

import json
import os
from typing import Any


def temporary_path(path: str) -> str:
    return f"{path}.tmp.{os.getpid()}"


def write_atomically(path: str, data: bytes) -> None:
    temporary = temporary_path(path)
    fd = os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC, 0o666)
    try:
        try:
            view = memoryview(data)
            while view:
                view = view[os.write(fd, view) :]
        finally:
            os.close(fd)
        os.replace(temporary, path)
    except BaseException:
        try:
            os.unlink(temporary)
        except FileNotFoundError:
            pass
        raise


def write_json_atomic(path: str, data: Any) -> None:
    """``data`` as indented JSON with sorted keys, written as ``write_atomically`` does."""
    write_atomically(path, json.dumps(data, indent=1, sort_keys=True).encode())

"""After the hand-off: application data straight into the caller's buffer, control records aside."""

from __future__ import annotations

import errno
import socket

from balancer.ktls.errors import KtlsRecordError
from balancer.ktls.kernel import SOL_TLS, TLS_GET_RECORD_TYPE, TLS_SET_RECORD_TYPE, errno_text
from balancer.ktls.records import ALERT, APPLICATION_DATA, CLOSE_NOTIFY, ControlRecords

_RECORD_ERRNOS = {errno.EBADMSG, errno.EMSGSIZE, errno.EIO, errno.EINVAL, errno.ENOMEM}


class KtlsReceiver:
    """Reads application data of a kernel TLS socket straight into the caller's buffer.

    ``recv_into`` returns the number of data bytes (> 0), 0 at the end of the stream
    (close_notify, or a TCP FIN: ``closed_by`` says which), raises BlockingIOError when
    nothing is ready, and KtlsError on a fatal alert, a KeyUpdate or a bad record.
    Session tickets are dropped.
    """

    def __init__(self, sock: socket.socket) -> None:
        self._sock = sock
        self._control = ControlRecords()
        self._ancillary_size = socket.CMSG_SPACE(1)
        self.closed_by: str | None = None  # "close_notify" | "eof"

    @property
    def session_tickets(self) -> int:
        return self._control.session_tickets

    def recv_into(self, buf: memoryview) -> int:
        while self.closed_by is None:
            try:
                nbytes, ancdata, _flags, _addr = self._sock.recvmsg_into(
                    [buf], self._ancillary_size
                )
            except BlockingIOError:
                raise
            except OSError as exc:
                if exc.errno in _RECORD_ERRNOS:
                    raise KtlsRecordError(
                        f"kernel TLS rejected a record from the server: {errno_text(exc)}"
                    ) from exc
                raise
            record_type = _record_type(ancdata)
            if record_type is None and nbytes == 0:
                self.closed_by = "eof"
            elif record_type in (None, APPLICATION_DATA):
                if nbytes:
                    return nbytes
            elif self._control.feed(record_type, bytes(buf[:nbytes])):
                self.closed_by = "close_notify"
        return 0


def _record_type(ancdata: list[tuple[int, int, bytes]]) -> int | None:
    for level, kind, data in ancdata:
        if level == SOL_TLS and kind == TLS_GET_RECORD_TYPE and data:
            return data[0]
    return None


def send_close_notify(sock: socket.socket) -> None:
    """Send a close_notify alert through the kernel's TLS transmit side."""
    sock.sendmsg([bytes([1, CLOSE_NOTIFY])], [(SOL_TLS, TLS_SET_RECORD_TYPE, bytes([ALERT]))])

"""Websocket echo client for the Autobahn|Testsuite client cases, built only on the balancer's
own protocol layers (balancer.handshake for the upgrade, balancer.frames for every frame).

Run as a process against a fuzzing server (kosoku.run_fuzzingserver):

    python tests/integration/autobahn_client.py HOST PORT AGENT

It asks /getCaseCount, runs /runCase?case=N&agent=AGENT for N = 1..count, echoing every data
message with its own opcode, answering pings, answering close frames and failing the connection
with the decoder's close code on a protocol violation, then asks /updateReports?agent=AGENT.
Exit status 0 once every case was driven to its end (the verdicts are the server's to give).
"""

from __future__ import annotations

import socket
import sys
from collections.abc import Iterable

from balancer.frames import (
    CLOSE_NORMAL,
    OP_PONG,
    Close,
    Event,
    FrameDecoder,
    Message,
    Ping,
    encode_close,
    encode_frame,
)
from balancer.handshake import build_request, check_response, new_key, parse_response_head

# Every socket operation is bounded, so a case the server never ends cannot hang the run.
IO_TIMEOUT = 10.0
USER_AGENT = "trade-balancer-autobahn-echo"


class Reply:
    """What to send back for a batch of events, and whether the connection is now closing."""

    def __init__(self) -> None:
        self.frames: list[bytes] = []
        self.closing = False


def reply_to(events: Iterable[Event], error_code: int | None) -> Reply:
    """The frames an echo client sends for ``events``; ``error_code`` is set when the decoder
    stopped on a protocol violation after them (we then fail the connection with that code)."""
    reply = Reply()
    for event in events:
        if type(event) is Message:
            reply.frames.append(encode_frame(event.opcode, event.payload))
        elif type(event) is Ping:
            reply.frames.append(encode_frame(OP_PONG, event.payload))
        elif type(event) is Close:
            # RFC 6455 5.5.1: answer with a close frame, echoing the status code we received.
            reply.frames.append(encode_close(event.code if event.code is not None else CLOSE_NORMAL))
            reply.closing = True
            return reply
        elif type(event) is bytes:
            raise TypeError("an untyped decoder cannot tell text from binary")
    if error_code is not None:
        reply.frames.append(encode_close(error_code))
        reply.closing = True
    return reply


def open_websocket(host: str, port: int, resource: str) -> tuple[socket.socket, FrameDecoder]:
    """Connect and upgrade; bytes received after the 101 head go to the returned decoder."""
    sock = socket.create_connection((host, port), timeout=IO_TIMEOUT)
    try:
        key = new_key()
        sock.sendall(build_request(f"{host}:{port}", resource, key, USER_AGENT))
        head = bytearray()
        while (parsed := parse_response_head(head)) is None:
            chunk = sock.recv(4096)
            if not chunk:
                raise ConnectionError(f"{resource}: connection closed during the opening handshake")
            head += chunk
        response, used = parsed
        check_response(response, key)
        # buffer_size=0: the decoder's 2 MiB floor, not the balancer's 8 MiB, for ~280 short connections
        decoder = FrameDecoder(buffer_size=0, typed=True)
        decoder.feed(head[used:])
        return sock, decoder
    except BaseException:
        sock.close()
        raise


def wait_for_server_close(sock: socket.socket) -> None:
    """After our close frame, the server closes the TCP connection first (RFC 6455 7.1.1);
    whatever it sends meanwhile is ignored."""
    try:
        while sock.recv(65536):
            pass
    except (TimeoutError, ConnectionError):
        pass


def run_session(sock: socket.socket, decoder: FrameDecoder) -> list[Message]:
    """Echo until the closing handshake ends or the server drops the connection; return the
    data messages received (the case count comes back as one)."""
    messages: list[Message] = []
    while True:
        events = decoder.events()
        messages.extend(e for e in events if type(e) is Message)
        error_code = decoder.error.close_code if decoder.error is not None else None
        reply = reply_to(events, error_code)
        try:
            for frame in reply.frames:
                sock.sendall(frame)
        except ConnectionError:
            return messages
        if reply.closing:
            wait_for_server_close(sock)
            return messages
        try:
            received = sock.recv_into(decoder.recv_buffer())
        except ConnectionError:
            return messages
        if received == 0:
            return messages
        decoder.commit(received)


def exchange(host: str, port: int, resource: str) -> list[Message]:
    sock, decoder = open_websocket(host, port, resource)
    with sock:
        return run_session(sock, decoder)


def case_count(host: str, port: int) -> int:
    messages = exchange(host, port, "/getCaseCount")
    if len(messages) != 1 or type(messages[0]) is not Message:
        raise RuntimeError(f"/getCaseCount answered {messages!r}, expected one message")
    return int(messages[0].payload)


def run_all_cases(host: str, port: int, agent: str) -> int:
    count = case_count(host, port)
    for case in range(1, count + 1):
        print(f"case {case} of {count}", file=sys.stderr, flush=True)
        exchange(host, port, f"/runCase?case={case}&agent={agent}")
    exchange(host, port, f"/updateReports?agent={agent}")
    return count


def main(argv: list[str]) -> int:
    if len(argv) != 4:
        print(f"usage: {argv[0]} HOST PORT AGENT", file=sys.stderr)
        return 2
    host, port, agent = argv[1], int(argv[2]), argv[3]
    count = run_all_cases(host, port, agent)
    print(f"autobahn_client: drove {count} cases", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))

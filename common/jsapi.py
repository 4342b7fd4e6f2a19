"""The JetStream API calls lb-bridge, lb-remote and workers.jetstream make, over common.natsclient.

Each call is a request to ``$JS.API.<...>`` with a JSON body and a JSON answer
(docs.nats.io, "JetStream wire API"); an answer holding ``{"error": {"code", "err_code",
"description"}}`` raises `APIError`. The configurations are plain dicts in the API's own
field names (durations in nanoseconds).
"""

from __future__ import annotations

import base64
import datetime
import re
from typing import Any

import orjson

from common import natsproto
from common.natsclient import Client

API = "$JS.API"
STREAM_NOT_FOUND = 10059
CONSUMER_NOT_FOUND = 10014
NS = 1_000_000_000

_NAME = re.compile(r"[^\s.*>/\\]{1,255}")  # stream and consumer names: no subject syntax, no spaces


def rfc3339(moment: datetime.datetime) -> str:
    """A time as the API takes it (``opt_start_time``): UTC, nanoseconds, ``Z``."""
    utc = moment.astimezone(datetime.UTC)
    return utc.strftime("%Y-%m-%dT%H:%M:%S.") + f"{utc.microsecond * 1000:09d}Z"


def check_name(name: str, what: str = "stream") -> str:
    if not _NAME.fullmatch(name):
        raise ValueError(f"bad {what} name {name!r}: no spaces, '.', '*', '>', '/' or '\\'")
    return name


class APIError(Exception):
    """The JetStream API answered with an error."""

    def __init__(self, code: int, err_code: int, description: str) -> None:
        super().__init__(f"{description} (code {code}, error {err_code})")
        self.code = code
        self.err_code = err_code
        self.description = description

    @property
    def not_found(self) -> bool:
        return self.code == 404 or self.err_code in (STREAM_NOT_FOUND, CONSUMER_NOT_FOUND)


def answer(data: bytes) -> dict[str, Any]:
    """An API answer's object, or APIError for an error answer or one that is not an object."""
    try:
        doc = orjson.loads(data)
    except orjson.JSONDecodeError as exc:
        raise APIError(0, 0, f"unreadable answer {bytes(data[:80])!r}") from exc
    if not isinstance(doc, dict):
        raise APIError(0, 0, f"unreadable answer {bytes(data[:80])!r}")
    error = doc.get("error")
    if error is not None:
        if not isinstance(error, dict):
            raise APIError(0, 0, str(error)[:200])
        code, err_code = error.get("code"), error.get("err_code")
        raise APIError(code if isinstance(code, int) else 0, err_code if isinstance(err_code, int) else 0,
                       str(error.get("description") or "error")[:500])
    return doc


class JetStream:
    def __init__(self, client: Client, timeout: float = 5.0) -> None:
        self.client = client
        self.timeout = timeout

    async def call(self, subject: str, body: dict[str, Any] | None = None) -> dict[str, Any]:
        msg = await self.client.request(f"{API}.{subject}", orjson.dumps(body) if body is not None else b"",
                                        self.timeout)
        return answer(msg.data)

    async def stream_info(self, name: str) -> dict[str, Any]:
        return await self.call(f"STREAM.INFO.{check_name(name)}")

    async def add_stream(self, config: dict[str, Any]) -> dict[str, Any]:
        return await self.call(f"STREAM.CREATE.{check_name(config['name'])}", config)

    async def consumer_info(self, stream: str, name: str) -> dict[str, Any] | None:
        """The consumer's info, or None if there is no such consumer."""
        try:
            return await self.call(f"CONSUMER.INFO.{check_name(stream)}.{check_name(name, 'consumer')}")
        except APIError as exc:
            if exc.err_code == CONSUMER_NOT_FOUND or (exc.code == 404 and exc.err_code != STREAM_NOT_FOUND):
                return None
            raise

    async def add_consumer(self, stream: str, config: dict[str, Any]) -> dict[str, Any]:
        """A durable consumer (``durable_name`` in the config), or an ephemeral one."""
        body = {"stream_name": stream, "config": config}
        if config.get("durable_name"):
            durable = check_name(config["durable_name"], "consumer")
            return await self.call(f"CONSUMER.DURABLE.CREATE.{check_name(stream)}.{durable}", body)
        return await self.call(f"CONSUMER.CREATE.{check_name(stream)}", body)

    async def delete_consumer(self, stream: str, name: str) -> bool:
        doc = await self.call(f"CONSUMER.DELETE.{check_name(stream)}.{check_name(name, 'consumer')}")
        return bool(doc.get("success"))

    async def get_msg(self, stream: str, seq: int) -> tuple[str, dict[str, str], bytes]:
        """(subject, headers, data) of the stored message with sequence ``seq``."""
        doc = await self.call(f"STREAM.MSG.GET.{check_name(stream)}", {"seq": seq})
        message = doc.get("message")
        if not isinstance(message, dict):
            raise APIError(0, 0, "a message answer without its message")
        data = base64.b64decode(message.get("data") or b"")
        hdrs = base64.b64decode(message.get("hdrs") or b"")
        headers = natsproto.parse_headers(hdrs)[2] if hdrs else {}
        return str(message.get("subject", "")), headers, data

"""JSON files other programs read: always replaced atomically (temp file + rename)."""

from __future__ import annotations

import os
from typing import Any

import orjson


def write_json_atomically(path: str, document: Any) -> None:
    temporary = f"{path}.tmp.{os.getpid()}"
    with open(temporary, "wb") as out:
        out.write(orjson.dumps(document, option=orjson.OPT_INDENT_2))
    os.replace(temporary, path)

"""The handler registry: the named handlers and `--handler module:name` loading (lb-pool's).

It sits above the handlers (they import `workers.handler`, never this), so the handler
interface, the handlers and their standalone `main()`s form no import cycle.
"""

from __future__ import annotations

import importlib
import inspect

from workers.bars import BarsHandler
from workers.handler import Handler, PerMessage
from workers.log import LogHandler
from workers.stats import StatsHandler
from workers.verify import VerifyHandler


def named_handlers() -> dict[str, type[Handler]]:
    return {h.name: h for h in (LogHandler, StatsHandler, VerifyHandler, BarsHandler)}


class HandlerNotFound(Exception):
    pass


def load_handler(spec: str) -> type[Handler]:
    """A named handler, or `module:name` naming a handler class or a per-message function."""
    named = named_handlers()
    if spec in named:
        return named[spec]
    module_name, sep, attribute = spec.partition(":")
    if not sep or not module_name or not attribute:
        raise HandlerNotFound(
            f"unknown handler {spec!r}: use one of {', '.join(named)} or module:function"
        )
    try:
        target = getattr(importlib.import_module(module_name), attribute)
    except (ImportError, AttributeError) as error:
        raise HandlerNotFound(f"cannot load handler {spec!r}: {error}") from error
    if inspect.isclass(target):
        if not callable(getattr(target, "on_batch", None)):
            raise HandlerNotFound(f"handler class {spec!r} has no on_batch(pipe, payloads)")
        return _with_defaults(target)
    if callable(target):
        return type(f"PerMessage[{spec}]", (PerMessage,), {"function": staticmethod(target)})
    raise HandlerNotFound(f"handler {spec!r} is neither a class nor a function")


def _with_defaults(target: type) -> type[Handler]:
    """A user class that does not subclass Handler still gets its defaults."""
    if issubclass(target, Handler):
        return target
    return type(target.__name__, (target, Handler), {})

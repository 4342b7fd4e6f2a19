"""Loading an optional compiled extension: the installed build, or a separately built one.

lb's data path (balancer/_speedups.c) and lb-bridge's batch cut (workers/_jscut.c) are each
optional: without a compiler at install time the pure-Python code runs (the reference). An
environment variable may name a .so built elsewhere (ci/sanitize.sh's ASan + UBSan builds),
which is then loaded from that path instead of the installed one."""

from __future__ import annotations

import importlib
import importlib.util
import os
from types import ModuleType


def load(name: str, env: str) -> ModuleType | None:
    """Module `name` ("balancer._speedups"), from the path in `$env` if set; None if not built."""
    path = os.environ.get(env)
    if path:
        spec = importlib.util.spec_from_file_location(name, path)
        if spec is None or spec.loader is None:
            raise ImportError(f"${env}={path!r} is not a loadable extension")
        module = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(module)
        return module
    try:
        return importlib.import_module(name)
    except ImportError:  # not built: the pure-Python code runs
        return None

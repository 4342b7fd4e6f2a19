import os
import sys

import pytest

HERE = os.path.dirname(os.path.abspath(__file__))
DUMP_WORKER = [sys.executable, os.path.join(HERE, "dump_worker.py")]


@pytest.fixture
def dump_worker() -> list[str]:
    return list(DUMP_WORKER)

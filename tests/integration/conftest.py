import os
import sys
from collections.abc import Callable, Iterator

import pytest

from balancer import ktls
from tests.helpers.workers_feed import Feed

HERE = os.path.dirname(os.path.abspath(__file__))
DUMP_WORKER = [sys.executable, os.path.join(HERE, "dump_worker.py")]


@pytest.fixture
def dump_worker() -> list[str]:
    return list(DUMP_WORKER)


@pytest.fixture(scope="module")
def kernel_tls() -> None:
    """The kTLS cases need a kernel with kTLS: inside the runner (TB_KTLS_REQUIRED) its absence
    is a failure; elsewhere they skip and say how to run them."""
    reason = ktls.probe()
    if reason is not None:
        message = f"{reason}; run these through: python -m ci.ktls_runner -- tests -m ktls"
        if os.environ.get("TB_KTLS_REQUIRED"):
            pytest.fail(message)
        pytest.skip(message)


@pytest.fixture
def feed_factory() -> Iterator[Callable[[int], Feed]]:
    """Feeds for lb-pool and the handlers (test_workers_*), their pipes closed afterwards."""
    feeds: list[Feed] = []

    def make(npipes: int) -> Feed:
        feeds.append(Feed(npipes))
        return feeds[-1]

    yield make
    for feed in feeds:
        for fd in (fd for pair in feed.pipes for fd in pair):
            try:
                os.close(fd)
            except OSError:
                pass

import signal

import pytest

from harness import lb


def _keep_hangups_default_for_children() -> None:
    """Under nohup the suite inherits SIGHUP ignored, and an ignored signal stays ignored across
    exec: every lb the tests start would then (rightly) treat a hangup as no stop, and the tests
    of SIGHUP would fail. A caught signal is reset to the default on exec, so catching it here
    keeps this process immune to the hangup, as nohup wanted, while its children start as they
    would from a terminal. (The test of lb under nohup ignores SIGHUP itself, with a trap.)"""
    if signal.getsignal(signal.SIGHUP) == signal.SIG_IGN:
        signal.signal(signal.SIGHUP, lambda signum, frame: None)


_keep_hangups_default_for_children()


@pytest.fixture(autouse=True)
def _no_stray_balancers():
    """A failing test must not leave lb (which reconnects forever) running."""
    yield
    lb.kill_all()

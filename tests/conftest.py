import pytest

from harness import lb


@pytest.fixture(autouse=True)
def _no_stray_balancers():
    """A failing test must not leave lb (which reconnects forever) running."""
    yield
    lb.kill_all()

"""The product's one version: the installed distribution's, for ``--version`` and the User-Agent."""

from __future__ import annotations

import argparse
from importlib.metadata import PackageNotFoundError
from importlib.metadata import version as _installed_version

DISTRIBUTION = "trade-balancer"

try:
    VERSION = _installed_version(DISTRIBUTION)
except PackageNotFoundError:  # run from a source tree that was never installed
    VERSION = "0+unknown"


def version_text(prog: str) -> str:
    return f"{prog} ({DISTRIBUTION}) {VERSION}"


def add_version_option(parser: argparse.ArgumentParser) -> None:
    """``--version``: print ``PROG (trade-balancer) X.Y.Z`` and exit 0."""
    parser.add_argument("--version", action="version", version=version_text(parser.prog),
                        help="print the version and exit")

"""simulate's defaults live in one place, ``Settings()``: the command line takes them from it."""

from __future__ import annotations

from dataclasses import fields

from simulator import cli
from simulator.config import Settings
from simulator.market import DEFAULT_TAPE_SIZE, SyntheticMarket
from simulator.pacing import DEFAULT_FRAME_INTERVAL
from simulator.symbols import DEFAULT_SYMBOLS

DECIDED_BY_THE_CLI = {"tls", "batch", "seed", "clock_start_ms", "ping_interval"}


def settings_for(argv: list[str]) -> Settings:
    parser = cli.build_parser()
    ns = parser.parse_args(argv)
    ns.rate_given = "--rate" in argv
    return cli.settings_from(ns, parser)


def test_the_command_line_defaults_are_the_settings_defaults() -> None:
    parsed = settings_for(["--no-tls"])
    defaults = Settings()
    for f in fields(Settings):
        if f.name not in DECIDED_BY_THE_CLI:
            assert getattr(parsed, f.name) == getattr(defaults, f.name), f.name
    assert parsed.ping_interval == defaults.ping_interval == 20.0


def test_one_definition_of_the_tape_size_symbols_and_frame_interval() -> None:
    defaults = Settings()
    assert defaults.tape_size == DEFAULT_TAPE_SIZE
    assert defaults.symbols == DEFAULT_SYMBOLS
    assert defaults.frame_interval == DEFAULT_FRAME_INTERVAL
    import inspect

    signature = inspect.signature(SyntheticMarket.__init__)
    assert signature.parameters["tape_size"].default == DEFAULT_TAPE_SIZE


def test_help_shows_the_defaults_it_uses() -> None:
    text = " ".join(cli.build_parser().format_help().split())
    assert f"({DEFAULT_TAPE_SIZE})" in text and f"({DEFAULT_SYMBOLS})" in text
    assert "(20s)" in text and "(10s)" in text and "(1ms)" in text and "(default 2k/s;" in text

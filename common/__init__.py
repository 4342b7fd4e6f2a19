"""What every program of the product shares and nothing else: the command line's units, the
version, the atomic file writer, a pipe's size. ``balancer``, ``simulator`` and ``workers`` import this and
never each other (tests/unit/test_import_cycles.py checks both)."""

"""Benchmarks (``python -m bench``): figures, never assertions (except ``--check``)."""

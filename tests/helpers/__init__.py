"""What the tests share: helper programs and functions, never tests.

No test module imports another (tests/unit/test_import_cycles.py checks it); what several
test modules need lives here. The older helper modules next to the tests
(tests/integration/feedgen.py, polyserver.py, sim_helpers.py, ...) are helpers too.
"""

"""Runs the three parts together as processes: the demo, the soak run, test helpers."""

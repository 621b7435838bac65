"""Synthetic demo websites and the fast HTTP server that serves them (tests, demo, benchmarks)."""

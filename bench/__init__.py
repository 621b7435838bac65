"""Benchmarks: ``python -m bench <name>``; a table for people, a last JSON line for machines."""

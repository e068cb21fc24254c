"""Benchmarks: `python -m benchmarks.<name>` (never timed tests)."""

"""Benchmarks as code: what `scaling bench` measures and the targets it must reach (targets.py judges)."""

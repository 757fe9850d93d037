"""Benchmarks: per-frame micro-benchmarks and the end-to-end lab harness (bench.e2e)."""

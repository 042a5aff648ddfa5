"""Benchmark data: one module per benchmark, plus collators."""

"""Benchmarks: they print figures and ratios, and never assert on speed."""

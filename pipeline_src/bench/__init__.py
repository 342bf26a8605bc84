"""Benchmarks: they print measured numbers and ratios; tests never time anything."""

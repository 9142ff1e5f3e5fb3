"""Benchmarks: `make bench` (full sizes) or `make bench QUICK=1`. See bench/README.md."""

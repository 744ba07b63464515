"""Side-by-side benchmark of shadowproxy, direct access and nginx (see docs/benchmarks.md)."""

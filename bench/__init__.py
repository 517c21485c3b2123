"""Benchmarks: forward time per backend (``bench.forward``), the HTTP service under load (``bench.http``)."""

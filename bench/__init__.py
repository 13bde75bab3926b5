"""Throughput benchmarks: webhook-ingest against a bare aiohttp handler, and the
outbox relay. Run with ``python -m bench`` (``make bench``); see
docs/performance.md.
"""

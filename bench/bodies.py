"""Distinct signed NOWPayments IPNs, written one per line for the wrk script.

Each line is ``<x-nowpayments-sig>\\t<raw JSON body>``. Every body has its own
``payment_id`` and ``order_id``, so each one is a new delivery, never a
duplicate. Signing goes through the service's own ``nowpayments_signature``;
it costs about 0.1 ms a body, so the work is spread over every core.
"""

from __future__ import annotations

import os
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

from services.webhook_ingest.signature import nowpayments_signature
from tests.support.ipn import ipn_body as test_ipn_body

FIRST_PAYMENT_ID = 6_000_000_000
_CHUNK = 10_000


def ipn_body(index: int) -> bytes:
    """One IPN shaped like the tests' ones, with its own ids."""
    return test_ipn_body(payment_id=FIRST_PAYMENT_ID + index, order_id=f"order-{index}")


def _signed_lines(secret: str, start: int, stop: int) -> bytes:
    lines = []
    for index in range(start, stop):
        body = ipn_body(index)
        lines.append(nowpayments_signature(secret, body).encode() + b"\t" + body)
    return b"\n".join(lines) + b"\n"


def write_signed_bodies(path: Path, secret: str, count: int) -> None:
    """Write ``count`` distinct signed IPNs to ``path``, in index order."""
    bounds = [(s, min(s + _CHUNK, count)) for s in range(0, count, _CHUNK)]
    workers = max(1, min(os.cpu_count() or 1, len(bounds)))
    with ProcessPoolExecutor(workers) as pool, path.open("wb") as out:
        chunks = pool.map(
            _signed_lines,
            [secret] * len(bounds),
            [start for start, _ in bounds],
            [stop for _, stop in bounds],
        )
        for chunk in chunks:
            out.write(chunk)

"""Building NOWPayments IPN bodies and signing them as NOWPayments does."""

from __future__ import annotations

import json
from typing import Any

from services.webhook_ingest.signature import nowpayments_signature


def ipn_body(
    payment_id: int = 5077125051, status: str = "finished", **extra: Any
) -> bytes:
    body = {
        "payment_id": payment_id,
        "invoice_id": None,
        "payment_status": status,
        "pay_address": "bc1qexampleaddress0000000000000000000000",
        "price_amount": 170,
        "price_currency": "usd",
        "pay_amount": 0.00412,
        "actually_paid": 0.00412,
        "pay_currency": "btc",
        "order_id": "order-1",
        "order_description": "Steam gift card",
        "purchase_id": "6084744717",
        "outcome_amount": 0.0041,
        "outcome_currency": "btc",
        **extra,
    }
    return json.dumps(body).encode()


def signed_headers(secret: str, body: bytes) -> dict[str, str]:
    return {
        "x-nowpayments-sig": nowpayments_signature(secret, body),
        "Content-Type": "application/json",
    }

"""The IPNs `bitloot simulate payment` plays, and the bytes it signs."""

from __future__ import annotations

import io
import json
from datetime import UTC, datetime
from decimal import Decimal
from typing import Any

import pytest

from services.payment.domain import Ipn
from services.payment.simulator import (
    SimulateSettings,
    SimulationError,
    ipn_json,
    ipn_script,
    simulate_payment,
)
from services.webhook_ingest.signature import (
    canonical_json,
    nowpayments_signature,
    parse_ipn_body,
    signature_matches,
)

ORDER_ID = "6f1c2b9e-3d4a-4f7b-9a1e-2c3d4e5f6a7b"
DUE = Decimal("0.00021053")
IPN_FIELDS = {
    "payment_id",
    "invoice_id",
    "payment_status",
    "pay_address",
    "price_amount",
    "price_currency",
    "pay_amount",
    "actually_paid",
    "actually_paid_at_fiat",
    "pay_currency",
    "order_id",
    "order_description",
    "purchase_id",
    "created_at",
    "updated_at",
    "outcome_amount",
    "outcome_currency",
}


def an_order(**payment: Any) -> dict[str, Any]:
    """An order as GET /v1/orders/{id} shows it, waiting for its payment."""
    return {
        "order_id": ORDER_ID,
        "status": "awaiting_payment",
        "total": {"amount": "20.00", "currency": "usd"},
        "items": [
            {
                "product_id": "steam-gift-card-20",
                "name": "Steam Gift Card 20 USD",
                "quantity": 1,
                "unit_price": "20.00",
                "currency": "usd",
            }
        ],
        "payment": {
            "provider": "simulator",
            "payment_id": "5077125051",
            "status": "waiting",
            "pay_address": "bc1qexampleaddress0000000000000000000000",
            "pay_amount": str(DUE),
            "pay_currency": "btc",
            "actually_paid": "0",
            **payment,
        },
        "created_at": "2025-01-02T03:04:05.678901+00:00",
        "updated_at": "2025-01-02T03:04:05.678901+00:00",
    }


def statuses(script: list[dict[str, Any]]) -> list[str]:
    return [body["payment_status"] for body in script]


def test_paying_less_than_due_ends_the_payment_partially_paid() -> None:
    """An underpayment ends partially_paid with the smaller amount in every IPN."""
    script = ipn_script(an_order(), Decimal("0.0001"), "pay")

    assert statuses(script) == ["confirming", "partially_paid"]
    assert [body["actually_paid"] for body in script] == [Decimal("0.0001")] * 2
    assert all(body["pay_amount"] == DUE for body in script)


def test_paying_exactly_what_is_due_runs_the_whole_way_to_finished() -> None:
    """No amount means the amount due, through every status of a good payment."""
    script = ipn_script(an_order(), None, "pay")

    assert statuses(script) == ["confirming", "confirmed", "sending", "finished"]
    assert all(body["actually_paid"] == DUE for body in script)


def test_paying_more_than_due_finishes_with_the_larger_amount() -> None:
    """An overpayment is a finished payment that reports what really arrived."""
    script = ipn_script(an_order(), Decimal("0.0003"), "pay")

    assert statuses(script) == ["confirming", "confirmed", "sending", "finished"]
    assert all(body["actually_paid"] == Decimal("0.0003") for body in script)


def test_an_expired_payment_is_one_ipn_with_nothing_paid() -> None:
    """Expiry ends a payment nothing arrived for."""
    script = ipn_script(an_order(), None, "expire")

    assert statuses(script) == ["expired"]
    assert script[0]["actually_paid"] == 0
    assert script[0]["outcome_amount"] == 0


def test_a_failed_payment_is_seen_first_then_fails() -> None:
    """A failure follows a confirming IPN, as when a transaction is dropped."""
    script = ipn_script(an_order(), None, "fail")

    assert statuses(script) == ["confirming", "failed"]


def test_every_ipn_carries_the_fields_nowpayments_sends() -> None:
    """Ids, amounts, currencies and times have NOWPayments' names and shapes."""
    first = datetime(2025, 1, 2, 3, 4, 59, 123456, tzinfo=UTC)
    script = ipn_script(an_order(), None, "pay", first_update=first)

    for body in script:
        assert set(body) == IPN_FIELDS
        assert body["payment_id"] == 5077125051
        assert body["invoice_id"] is None
        assert body["order_id"] == ORDER_ID
        assert body["purchase_id"].isdigit()
        assert body["price_amount"] == Decimal(20)
        assert body["price_currency"] == "usd"
        assert body["pay_currency"] == body["outcome_currency"] == "btc"
        assert body["order_description"] == "1 x Steam Gift Card 20 USD"
        assert body["created_at"] == "2025-01-02T03:04:05.678Z"
        assert 0 < body["outcome_amount"] < body["actually_paid"]
    assert [body["updated_at"] for body in script] == [
        "2025-01-02T03:04:59.123Z",
        "2025-01-02T03:05:00.123Z",
        "2025-01-02T03:05:01.123Z",
        "2025-01-02T03:05:02.123Z",
    ]


def test_a_payment_id_that_is_not_a_number_stays_a_string() -> None:
    """Only an all-digit id becomes a JSON integer."""
    script = ipn_script(an_order(payment_id="sim-42"), None, "expire")

    assert script[0]["payment_id"] == "sim-42"


@pytest.mark.parametrize(
    ("paid", "outcome", "problem"),
    [
        (Decimal(0), "pay", "more than 0"),
        (Decimal("-0.1"), "pay", "more than 0"),
        (Decimal("0.1"), "expire", "makes no sense"),
        (None, "refund", "is not one of"),
    ],
)
def test_a_script_that_cannot_happen_is_refused(
    paid: Decimal | None, outcome: str, problem: str
) -> None:
    """Nothing is sent for a payment no provider would report."""
    with pytest.raises(SimulationError, match=problem):
        ipn_script(an_order(), paid, outcome)


def test_ipn_json_writes_amounts_with_the_decimals_own_digits() -> None:
    """No float rounding and no exponent form reach the signed bytes."""
    raw = ipn_json(
        {
            "actually_paid": Decimal("0.00042106"),
            "pay_amount": Decimal("1E-8"),
            "price_amount": Decimal("20"),
            "invoice_id": None,
            "order_id": "ø",
        }
    )

    assert raw == (
        b'{"actually_paid":0.00042106,"pay_amount":0.00000001,'
        b'"price_amount":20,"invoice_id":null,"order_id":"\\u00f8"}'
    )


def test_ipn_json_refuses_a_float_amount() -> None:
    """A float would already have lost the amount's digits."""
    with pytest.raises(TypeError, match="never float"):
        ipn_json({"actually_paid": 0.1})


def test_a_signed_ipn_passes_webhook_ingests_check_and_reads_back_exactly() -> None:
    """The signature verifies as webhook-ingest checks it; amounts survive."""
    body = ipn_script(an_order(), Decimal("0.00042106"), "pay")[-1]
    raw = ipn_json(body)

    signature = nowpayments_signature("ipn-secret", raw)

    canonical = canonical_json(parse_ipn_body(raw))
    assert signature_matches("ipn-secret", canonical, signature)
    assert not signature_matches("another-secret", canonical, signature)
    read = Ipn.from_body(json.loads(raw))
    assert read.actually_paid == Decimal("0.00042106")
    assert read.payment_id == "5077125051"
    assert json.loads(raw, parse_float=Decimal)["pay_amount"] == DUE


async def test_a_zero_amount_is_refused_before_anything_is_sent() -> None:
    """The services are not even asked; the message names the amount."""
    out = io.StringIO()
    settings = SimulateSettings(
        payment_url="http://127.0.0.1:9", webhook_ingest_url="http://127.0.0.1:9"
    )

    code = await simulate_payment(
        ORDER_ID,
        paid=Decimal(0),
        outcome="pay",
        settings=settings,
        secret="ipn-secret",
        out=out,
    )

    assert code == 2
    assert out.getvalue() == "--paid must be more than 0, not 0\n"

"""An order's emails: shopper → payment → webhook-ingest → payment → email → SMTP."""

from __future__ import annotations

from decimal import Decimal

from tests.conftest import StartEmail, StartIngest, StartPayment
from tests.e2e.test_order_to_payment import ipn, send
from tests.support.emails import sent, text_of
from tests.support.metrics import scrape_until
from tests.support.payments import place_order, wait_for_order
from tests.support.smtp_server import SmtpServer


async def test_an_underpaid_order_sends_how_to_pay_then_what_is_missing(
    start_ingest: StartIngest,
    start_payment: StartPayment,
    start_email: StartEmail,
    metrics_token: str,
) -> None:
    """Two emails reach the shopper's SMTP server, with the order's real figures."""
    async with SmtpServer() as smtp:
        email = await start_email(smtp_port=smtp.port)
        ingest = await start_ingest()
        payment = await start_payment()

        status, order = await place_order(payment.url)
        assert status == 201, order
        asked = Decimal(order["payment"]["pay_amount"])
        paid = (asked / 2).quantize(Decimal("0.00000001"))
        body = ipn(order, "partially_paid", str(paid), "2026-12-03T10:05:00.000Z")
        assert await send(ingest, body) == "accepted"
        await wait_for_order(payment.url, order["order_id"], "partially_paid")
        mails = await smtp.wait_for(2, timeout=15)
        samples = await scrape_until(
            email.url,
            metrics_token,
            lambda s: sent(s, "payment_created") == 1 and sent(s, "underpaid") == 1,
        )

    assert {m.rcpt_tos for m in mails} == {("shopper@example.com",)}
    texts = {m.message["Subject"]: text_of(m) for m in mails}
    how_to_pay = texts["How to pay for your BitLoot order"]
    assert f"{asked} BTC" in how_to_pay
    assert order["payment"]["pay_address"] in how_to_pay
    missing = texts["Your BitLoot payment is incomplete"]
    assert f"Missing: {asked - paid} BTC" in missing
    assert order["order_id"] in missing
    assert sent(samples, "payment_completed") == 0

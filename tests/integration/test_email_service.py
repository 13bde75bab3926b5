"""The email service on the real broker and database, sending to a real SMTP server.

Events are published to the exchange as the otp and payment relays publish
them; the SMTP server is aiosmtpd, started by each test.
"""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator
from datetime import timedelta
from typing import Any

import aio_pika
import asyncpg
import pytest

from services.email import store
from services.email.bootstrap import NOTIFICATIONS_QUEUE
from shared.service import RunningService
from tests.conftest import StartEmail
from tests.support.emails import (
    PAY_ADDRESS,
    failed,
    html_of,
    otp_requested,
    payment_completed,
    payment_created,
    payment_underpaid,
    registered,
    requested,
    retried,
    sent,
    text_of,
)
from tests.support.events import EventTap
from tests.support.metrics import Samples, scrape_until
from tests.support.payments import publish
from tests.support.smtp_server import SmtpServer
from tests.support.webhooks import fetch_rows

EMAIL_EVENTS = ["email.sent", "email.failed"]


@pytest.fixture
async def smtp() -> AsyncIterator[SmtpServer]:
    async with SmtpServer() as server:
        yield server


async def settled(
    email: RunningService, token: str, count: int, timeout: float = 10.0
) -> Samples:
    """Wait until ``count`` emails were sent or given up on, by the counters."""

    def done(samples: Samples) -> bool:
        finished = sum(
            v
            for (name, _), v in samples.items()
            if name
            in ("bitloot_email_send_success_total", "bitloot_email_send_failed_total")
        )
        return finished >= count

    return await scrape_until(email.url, token, done, timeout)


def redelivered(samples: Samples) -> float:
    """Events the inbox had already seen, of every type."""
    return sum(
        v
        for (name, labels), v in samples.items()
        if name == "bitloot_events_consumed_total"
        and ("outcome", "duplicate") in labels
    )


async def final_emails(
    database_url: str, count: int, timeout: float = 10.0
) -> list[asyncpg.Record]:
    """The email rows once ``count`` are recorded and none is left to send.

    Every fact then has its row, and a row that is sent or failed is never
    claimed again: from here on no further email can leave.
    """
    async with asyncio.timeout(timeout):
        while True:
            rows = await fetch_rows(
                database_url,
                "SELECT type, status, data, attempts FROM email.emails ORDER BY type",
            )
            if len(rows) >= count and all(
                r["status"] in ("sent", "failed") for r in rows
            ):
                return rows
            await asyncio.sleep(0.05)


async def test_each_event_becomes_its_email_with_the_right_content(
    start_email: StartEmail, smtp: SmtpServer, amqp_url: str, metrics_token: str
) -> None:
    """otp, welcome, payment created, completed and underpaid: one email each."""
    email = await start_email(smtp_port=smtp.port)
    order_id = uuid.uuid4()

    async with EventTap(amqp_url, EMAIL_EVENTS) as tap:
        await publish(
            amqp_url,
            otp_requested("person@example.com", code="318275"),
            registered("new@example.com"),
            payment_created(order_id),
            payment_completed(order_id),
            payment_underpaid(order_id),
        )
        mails = await smtp.wait_for(5)
        events = await tap.wait_for(5)
    samples = await settled(email, metrics_token, 5)

    by_subject = {m.message["Subject"]: m for m in mails}
    code = by_subject["Your BitLoot login code"]
    assert code.rcpt_tos == ("person@example.com",)
    assert "318275" in text_of(code) and "318275" in html_of(code)
    assert "Welcome to BitLoot" in text_of(by_subject["Welcome to BitLoot"])
    how_to_pay = text_of(by_subject["How to pay for your BitLoot order"])
    assert "0.00021053 BTC" in how_to_pay and PAY_ADDRESS in how_to_pay
    assert str(order_id) in text_of(
        by_subject["Payment received for your BitLoot order"]
    )
    assert "Missing: 0.00011053 BTC" in text_of(
        by_subject["Your BitLoot payment is incomplete"]
    )
    for email_type in ("otp", "welcome", "payment_created", "payment_completed"):
        assert sent(samples, email_type) == 1
    assert sent(samples, "underpaid") == 1
    assert sorted(e["data"]["type"] for e in events) == [
        "otp",
        "payment_completed",
        "payment_created",
        "underpaid",
        "welcome",
    ]
    assert {e["type"] for e in events} == {"email.sent"}
    # email.sent names the fact, never the address or the code.
    assert "example.com" not in str(events) and "318275" not in str(events)


async def test_the_code_is_erased_once_its_email_is_sent(
    start_email: StartEmail, smtp: SmtpServer, amqp_url: str, database_url: str
) -> None:
    """Only the command message and the pending row ever hold an OTP code."""
    await start_email(smtp_port=smtp.port)

    await publish(amqp_url, otp_requested(code="555123"), payment_created())
    await smtp.wait_for(2)
    rows = await final_emails(database_url, 2)

    assert [(r["type"], r["status"], r["data"] is None) for r in rows] == [
        ("otp", "sent", True),
        ("payment_created", "sent", False),
    ]


async def test_one_fact_sends_one_email_however_often_it_is_announced(
    start_email: StartEmail,
    smtp: SmtpServer,
    amqp_url: str,
    metrics_token: str,
    database_url: str,
) -> None:
    """One event five times, and a second event of the same fact: one email each."""
    email = await start_email(smtp_port=smtp.port)
    order_id = uuid.uuid4()
    created = payment_created(order_id)

    await publish(amqp_url, *[created] * 5)
    await publish(amqp_url, payment_completed(order_id), payment_completed(order_id))
    samples = await scrape_until(
        email.url,
        metrics_token,
        lambda s: (
            redelivered(s) == 4 and requested(s, "payment_completed", "duplicate") == 1
        ),
    )
    # Every event is handled, so once both rows are final no email can follow.
    rows = await final_emails(database_url, 2)

    assert len(smtp.messages) == 2
    assert [(r["type"], r["status"]) for r in rows] == [
        ("payment_completed", "sent"),
        ("payment_created", "sent"),
    ]
    assert requested(samples, "payment_created", "new") == 1
    assert requested(samples, "payment_completed", "new") == 1


async def test_a_redelivery_after_commit_but_before_ack_sends_nothing_more(
    start_email: StartEmail,
    smtp: SmtpServer,
    amqp_url: str,
    metrics_token: str,
    database_url: str,
) -> None:
    """The inbox and the recorded key make the broker's redelivery a no-op."""
    email = await start_email(smtp_port=smtp.port)
    consumer = next(
        c for c in email.runtime.consumers if c.queue_name == NOTIFICATIONS_QUEUE
    )
    event = payment_underpaid()

    # The handler commits, then the process "dies" before acknowledging...
    assert await consumer.handle_once(event)
    await smtp.wait_for(1)
    # ...so the broker delivers the same message again.
    await publish(amqp_url, event)
    await scrape_until(email.url, metrics_token, lambda s: redelivered(s) == 1)
    rows = await final_emails(database_url, 1)

    assert len(smtp.messages) == 1
    assert [(r["status"], r["attempts"]) for r in rows] == [("sent", 1)]


async def test_two_instances_consuming_together_send_each_email_once(
    start_email: StartEmail, smtp: SmtpServer, amqp_url: str, database_url: str
) -> None:
    """Forty facts, two instances on one database and one queue: forty emails."""
    await start_email(smtp_port=smtp.port, email_send_concurrency=3)
    await start_email(smtp_port=smtp.port, email_send_concurrency=3)
    facts = [registered(f"user{n}@example.com") for n in range(20)]
    facts += [payment_created() for _ in range(20)]

    await publish(amqp_url, *facts, *facts)
    await smtp.wait_for(40, timeout=20)
    # Forty facts, forty final rows: any copy still in the queues is a duplicate.
    rows = await final_emails(database_url, 40, timeout=20)

    assert len(smtp.messages) == 40
    assert len({m.message["Message-ID"] for m in smtp.messages}) == 40
    assert [(r["status"], r["attempts"]) for r in rows] == [("sent", 1)] * 40


async def test_a_refused_address_fails_at_once_as_invalid_address(
    start_email: StartEmail, smtp: SmtpServer, amqp_url: str, metrics_token: str
) -> None:
    """SMTP 550, or an address that is not one: no retry, counted, email.failed."""
    email = await start_email(smtp_port=smtp.port)

    async with EventTap(amqp_url, ["email.failed"]) as tap:
        await publish(
            amqp_url,
            payment_created(email="rejected@example.com"),
            registered("not-an-address"),
        )
        events = await tap.wait_for(2)
    samples = await settled(email, metrics_token, 2)

    assert failed(samples, "payment_created", "invalid_address") == 1
    assert failed(samples, "welcome", "invalid_address") == 1
    assert retried(samples, "payment_created", "invalid_address") == 0
    assert sorted((e["data"]["reason"], e["data"]["attempts"]) for e in events) == [
        ("invalid_address", 1),
        ("invalid_address", 1),
    ]
    assert smtp.messages == []


async def test_a_provider_error_is_retried_then_counted_when_attempts_run_out(
    start_email: StartEmail, smtp: SmtpServer, amqp_url: str, metrics_token: str
) -> None:
    """451 on every try: three attempts, two retries counted, then one failure."""
    email = await start_email(smtp_port=smtp.port, email_max_attempts=3)

    async with EventTap(amqp_url, ["email.failed"]) as tap:
        await publish(amqp_url, registered("greylisted@example.com"))
        events = await tap.wait_for(1)
    samples = await settled(email, metrics_token, 1)

    assert retried(samples, "welcome", "api_error") == 2
    assert failed(samples, "welcome", "api_error") == 1
    assert events[0]["data"]["attempts"] == 3
    assert events[0]["data"]["provider"] == "smtp"


async def test_a_timeout_is_retried_and_counted_as_timeout_when_it_persists(
    start_email: StartEmail, smtp: SmtpServer, amqp_url: str, metrics_token: str
) -> None:
    """A server that stops answering before it takes the message: timeout each try."""
    email = await start_email(
        smtp_port=smtp.port, smtp_timeout_seconds=0.3, email_max_attempts=2
    )
    smtp.misbehave = "hang_at_rcpt"

    await publish(amqp_url, otp_requested())
    samples = await settled(email, metrics_token, 1)

    assert retried(samples, "otp", "timeout") == 1
    assert failed(samples, "otp", "timeout") == 1


async def test_a_late_answer_after_the_body_fails_the_email_once_without_a_retry(
    start_email: StartEmail,
    smtp: SmtpServer,
    amqp_url: str,
    metrics_token: str,
    database_url: str,
) -> None:
    """The server kept the message but answered too late: one email, no second."""
    email = await start_email(
        smtp_port=smtp.port, smtp_timeout_seconds=0.3, email_max_attempts=3
    )
    smtp.misbehave = "hang_after_data"

    async with EventTap(amqp_url, ["email.failed"]) as tap:
        await publish(amqp_url, payment_completed())
        events = await tap.wait_for(1)
    samples = await settled(email, metrics_token, 1)

    assert len(smtp.messages) == 1
    assert failed(samples, "payment_completed", "timeout") == 1
    assert retried(samples, "payment_completed", "timeout") == 0
    assert sent(samples, "payment_completed") == 0
    assert (events[0]["data"]["reason"], events[0]["data"]["attempts"]) == (
        "timeout",
        1,
    )
    rows = await fetch_rows(database_url, "SELECT status, attempts FROM email.emails")
    assert [(r["status"], r["attempts"]) for r in rows] == [("failed", 1)]


async def test_a_transient_failure_then_success_counts_one_email_sent(
    start_email: StartEmail, smtp: SmtpServer, amqp_url: str, metrics_token: str
) -> None:
    """The first try times out, the second gets through: sent, not failed."""
    email = await start_email(smtp_port=smtp.port, smtp_timeout_seconds=0.3)
    smtp.misbehave = "hang_at_rcpt"

    async with EventTap(amqp_url, ["email.sent"]) as tap:
        await publish(amqp_url, payment_completed())
        await scrape_until(
            email.url,
            metrics_token,
            lambda s: retried(s, "payment_completed", "timeout") >= 1,
        )
        smtp.misbehave = None
        events = await tap.wait_for(1)
    samples = await settled(email, metrics_token, 1)

    assert sent(samples, "payment_completed") == 1
    assert failed(samples, "payment_completed", "timeout") == 0
    assert events[0]["data"]["attempts"] >= 2
    assert len(smtp.messages) == 1


async def test_an_expired_code_is_not_sent(
    start_email: StartEmail, smtp: SmtpServer, amqp_url: str, metrics_token: str
) -> None:
    """A code email that could not leave before its code expired is failed."""
    email = await start_email(smtp_port=smtp.port)

    await publish(amqp_url, otp_requested(expires_in=-timedelta(seconds=1)))
    samples = await settled(email, metrics_token, 1)

    assert failed(samples, "otp", "timeout") == 1
    assert smtp.messages == []


async def test_a_message_that_cannot_be_parsed_is_parked_in_the_dlq(
    start_email: StartEmail, smtp: SmtpServer, amqp_url: str, metrics_token: str
) -> None:
    """Not JSON, or an envelope whose data breaks its contract: .dlq, counted once."""
    email = await start_email(smtp_port=smtp.port)
    broken = payment_created().model_copy(update={"data": {"order_id": "nope"}})

    connection = await aio_pika.connect(amqp_url)
    async with connection:
        channel = await connection.channel()
        exchange = await channel.get_exchange("bitloot.events")
        await exchange.publish(
            aio_pika.Message(b"{not json", message_id="garbage-1"),
            routing_key="payment.created",
        )
    await publish(amqp_url, broken)

    samples = await scrape_until(
        email.url,
        metrics_token,
        lambda s: (
            sum(
                v
                for (name, labels), v in s.items()
                if name == "bitloot_events_consumed_total"
                and ("outcome", "dead_letter") in labels
            )
            == 2
        ),
    )
    connection = await aio_pika.connect(amqp_url)
    async with connection:
        channel = await connection.channel()
        dlq = await channel.declare_queue(f"{NOTIFICATIONS_QUEUE}.dlq", passive=True)
        parked = dlq.declaration_result.message_count

    assert parked == 2
    retries = sum(
        v
        for (name, labels), v in samples.items()
        if name == "bitloot_events_consumed_total" and ("outcome", "retry") in labels
    )
    assert retries == 0
    assert smtp.messages == []


async def test_the_sender_carries_on_after_a_pass_fails_with_an_unexpected_error(
    start_email: StartEmail,
    smtp: SmtpServer,
    amqp_url: str,
    metrics_token: str,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A bug in one pass of the sender loop does not stop every later email."""
    claim_due = store.claim_due
    failures = []

    async def claim_due_failing_once(*args: Any, **kwargs: Any) -> Any:
        if not failures:
            failures.append("claim_due")
            raise RuntimeError("a bug that is not a database error")
        return await claim_due(*args, **kwargs)

    monkeypatch.setattr(store, "claim_due", claim_due_failing_once)
    email = await start_email(smtp_port=smtp.port)

    await publish(amqp_url, registered("after@example.com"), payment_created())
    mails = await smtp.wait_for(2)
    samples = await settled(email, metrics_token, 2)

    assert failures == ["claim_due"]
    assert sorted(m.rcpt_tos for m in mails) == [
        ("after@example.com",),
        ("shopper@example.com",),
    ]
    assert sent(samples, "welcome") == 1
    assert sent(samples, "payment_created") == 1

"""A parked message's reason names what broke, never the values it carried."""

from __future__ import annotations

from collections.abc import AsyncIterator

import aio_pika
import pytest
from structlog.testing import capture_logs

from services.email.bootstrap import OTP_QUEUE
from shared.consumer import ERROR_HEADER
from tests.conftest import StartEmail
from tests.support.emails import otp_requested
from tests.support.metrics import scrape_until
from tests.support.payments import publish
from tests.support.smtp_server import SmtpServer

CODE = "731904"
ADDRESS = "secret.person@example.com"


@pytest.fixture
async def smtp() -> AsyncIterator[SmtpServer]:
    async with SmtpServer() as server:
        yield server


async def test_a_broken_code_request_is_parked_without_its_code_or_address(
    start_email: StartEmail, smtp: SmtpServer, amqp_url: str, metrics_token: str
) -> None:
    """The reason in the log and the .dlq header names the field, not the data."""
    email = await start_email(smtp_port=smtp.port)
    whole = otp_requested(email=ADDRESS, code=CODE)
    data = {key: value for key, value in whole.data.items() if key != "expires_at"}
    broken = whole.model_copy(update={"data": data})

    with capture_logs() as logs:
        await publish(amqp_url, broken)
        await scrape_until(
            email.url,
            metrics_token,
            lambda s: any(
                name == "bitloot_events_consumed_total"
                and ("outcome", "dead_letter") in labels
                and value == 1
                for (name, labels), value in s.items()
            ),
        )
    connection = await aio_pika.connect(amqp_url)
    async with connection:
        channel = await connection.channel()
        dlq = await channel.declare_queue(f"{OTP_QUEUE}.dlq", passive=True)
        parked = await dlq.get(timeout=5)
        assert parked is not None
        await parked.ack()

    header = str(parked.headers[ERROR_HEADER])
    parked_lines = [line for line in logs if line["event"] == "event_dead_lettered"]
    assert "expires_at" in header
    assert len(parked_lines) == 1
    for text in (header, str(parked_lines[0])):
        assert CODE not in text
        assert ADDRESS not in text
    assert smtp.messages == []

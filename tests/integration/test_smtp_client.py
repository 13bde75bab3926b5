"""The SMTP provider against a local SMTP server that misbehaves on request."""

from __future__ import annotations

import socket
import time
from collections.abc import AsyncIterator

import pytest

from services.email.domain import (
    EmailType,
    FailureReason,
    OutgoingEmail,
    SendError,
    idempotency_key,
)
from services.email.smtp import SmtpProvider, message_id_for
from tests.support.smtp_server import Misbehaviour, SmtpServer

SENDER = "BitLoot <orders@bitloot.example>"
SHOPPER = "shopper@example.com"
TIMEOUT = 0.3


@pytest.fixture
async def smtp() -> AsyncIterator[SmtpServer]:
    async with SmtpServer() as server:
        yield server


def provider_for(port: int, timeout: float = TIMEOUT) -> SmtpProvider:
    return SmtpProvider("127.0.0.1", port, timeout=timeout, local_hostname="test")


def outgoing(recipient: str = SHOPPER, business_key: str = "order-1") -> OutgoingEmail:
    return OutgoingEmail(
        idempotency_key=idempotency_key(EmailType.PAYMENT_COMPLETED, business_key),
        email_type=EmailType.PAYMENT_COMPLETED,
        sender=SENDER,
        recipient=recipient,
        subject="Your order is paid — thank you ✓",
        text="Your order is paid.\nYour keys follow shortly.",
        html="<p>Your order is <b>paid</b>.</p>",
    )


async def failure_of(provider: SmtpProvider, email: OutgoingEmail) -> SendError:
    with pytest.raises(SendError) as caught:
        await provider.send(email)
    assert email.recipient.lower() not in caught.value.detail.lower()
    assert email.recipient.lower() not in str(caught.value).lower()
    return caught.value


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


async def test_a_sent_email_arrives_with_its_headers_and_both_parts(
    smtp: SmtpServer,
) -> None:
    """From, To, Subject, Date, the text and the HTML part all arrive intact."""
    email = outgoing()

    message_id = await provider_for(smtp.port).send(email)

    [mail] = await smtp.wait_for(1)
    assert mail.mail_from == "orders@bitloot.example"
    assert mail.rcpt_tos == (SHOPPER,)
    message = mail.message
    assert message["From"] == SENDER
    assert message["To"] == SHOPPER
    assert message["Subject"] == email.subject
    assert message["Date"] is not None
    assert message["Message-ID"] == message_id
    assert message["Resend-Idempotency-Key"] == email.idempotency_key
    assert message.get_content_type() == "multipart/alternative"
    text = message.get_body(preferencelist=("plain",))
    html = message.get_body(preferencelist=("html",))
    assert text is not None and html is not None
    assert text.get_content().strip() == email.text
    assert html.get_content().strip() == email.html


async def test_the_same_idempotency_key_gives_the_same_message_id(
    smtp: SmtpServer,
) -> None:
    """A repeat carries its first copy's Message-ID; another email does not."""
    provider = provider_for(smtp.port)

    first = await provider.send(outgoing())
    again = await provider.send(outgoing())
    other = await provider.send(outgoing(business_key="order-2"))

    mails = await smtp.wait_for(3)
    assert first == again != other
    assert [m.message["Message-ID"] for m in mails] == [first, again, other]
    assert first == message_id_for(outgoing().idempotency_key, SENDER)
    assert first.endswith("@bitloot.example>")


async def test_a_refused_recipient_is_an_invalid_address_not_worth_retrying(
    smtp: SmtpServer,
) -> None:
    """550 to RCPT: the address is wrong, and asking again will not change that."""
    error = await failure_of(provider_for(smtp.port), outgoing("rejected@example.com"))

    assert error.reason is FailureReason.INVALID_ADDRESS
    assert not error.retryable
    assert "550" in error.detail
    assert "<recipient>" in error.detail
    assert smtp.messages == []


async def test_a_relaying_refusal_is_an_api_error_not_an_invalid_address(
    smtp: SmtpServer,
) -> None:
    """550 5.7.x to RCPT is policy, our configuration: final, but not the address."""
    error = await failure_of(provider_for(smtp.port), outgoing("unrelayed@example.com"))

    assert error.reason is FailureReason.API_ERROR
    assert not error.retryable
    assert "550 on RCPT" in error.detail


async def test_greylisting_is_an_api_error_worth_retrying(smtp: SmtpServer) -> None:
    """451 to DATA is temporary: the same email may pass later."""
    error = await failure_of(
        provider_for(smtp.port), outgoing("greylisted@example.com")
    )

    assert error.reason is FailureReason.API_ERROR
    assert error.retryable
    assert "451" in error.detail
    assert "Greylisted" in error.detail
    assert smtp.messages == []


async def test_a_server_that_stops_answering_before_accepting_is_worth_retrying(
    smtp: SmtpServer,
) -> None:
    """No answer to RCPT within the timeout: nothing was handed over, so retry."""
    smtp.misbehave = "hang_at_rcpt"
    started = time.monotonic()

    error = await failure_of(provider_for(smtp.port), outgoing())

    assert error.reason is FailureReason.TIMEOUT
    assert error.retryable
    assert time.monotonic() - started < 3
    assert smtp.messages == []


@pytest.mark.parametrize("misbehaviour", ["hang_after_data", "drop_after_data"])
async def test_a_lost_answer_after_the_body_is_a_final_timeout(
    smtp: SmtpServer, misbehaviour: Misbehaviour
) -> None:
    """The server kept the message but its answer never came: never sent again."""
    smtp.misbehave = misbehaviour

    error = await failure_of(provider_for(smtp.port), outgoing())

    assert error.reason is FailureReason.TIMEOUT
    assert not error.retryable
    assert "may have been delivered" in error.detail
    assert len(smtp.messages) == 1


async def test_a_closed_port_is_an_api_error_worth_retrying() -> None:
    """Nobody listening: a connection error, which may clear up."""
    error = await failure_of(provider_for(free_port()), outgoing())

    assert error.reason is FailureReason.API_ERROR
    assert error.retryable


async def test_an_address_unfit_for_smtp_is_refused_without_connecting() -> None:
    """An address that would break the RCPT line never reaches a server."""
    error = await failure_of(provider_for(free_port()), outgoing("a b@example.com"))

    assert error.reason is FailureReason.INVALID_ADDRESS
    assert not error.retryable


async def test_closing_a_provider_that_never_sent_is_harmless() -> None:
    """close() holds nothing open, so it may be called at any time."""
    provider = provider_for(free_port())

    await provider.close()
    await provider.close()

"""The Resend client against a local fake speaking Resend's shapes."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator, Callable

import pytest
from aiohttp import web

from services.email.domain import EmailType, FailureReason, OutgoingEmail, SendError
from services.email.providers import RESEND
from services.email.resend import ResendProvider
from tests.support.fake_resend import (
    API_KEY,
    INVALID_FROM,
    INVALID_REPLY_TO,
    INVALID_SUBJECT,
    INVALID_TO,
    Behaviour,
    FakeResend,
)

TIMEOUT = 0.3
RECIPIENT = "shopper@example.com"
SENDER = "BitLoot <no-reply@bitloot.example>"

MakeProvider = Callable[..., ResendProvider]


@pytest.fixture
async def fake() -> AsyncIterator[FakeResend]:
    async with FakeResend() as server:
        yield server


@pytest.fixture
async def make_provider(fake: FakeResend) -> AsyncIterator[MakeProvider]:
    made: list[ResendProvider] = []

    def make(
        *,
        api_key: str = API_KEY,
        base_url: str | None = None,
        timeout: float = TIMEOUT,
    ) -> ResendProvider:
        provider = ResendProvider(
            api_key=api_key,
            base_url=fake.base_url if base_url is None else base_url,
            timeout=timeout,
        )
        made.append(provider)
        return provider

    yield make
    for provider in made:
        await provider.close()


def outgoing(
    recipient: str = RECIPIENT,
    *,
    key: str | None = None,
    subject: str = "Your BitLoot order is paid",
) -> OutgoingEmail:
    return OutgoingEmail(
        idempotency_key=key or f"payment_completed:{uuid.uuid4()}",
        email_type=EmailType.PAYMENT_COMPLETED,
        sender=SENDER,
        recipient=recipient,
        subject=subject,
        text="Thanks for your order. Your key: AAAA-BBBB-CCCC",
        html="<p>Thanks for your order. Your key: <b>AAAA-BBBB-CCCC</b></p>",
    )


async def test_a_send_returns_resends_id_and_carries_the_expected_request(
    fake: FakeResend, make_provider: MakeProvider
) -> None:
    """A 200 answer's id is returned; the request had the key, headers and body."""
    provider = make_provider()
    email = outgoing()

    email_id = await provider.send(email)

    assert provider.name == RESEND
    assert provider.deduplicates
    [delivered] = fake.delivered
    assert email_id == delivered.id
    assert str(uuid.UUID(email_id)) == email_id
    assert delivered.to == (RECIPIENT,)
    assert delivered.idempotency_key == email.idempotency_key

    [seen] = fake.requests
    assert seen.method == "POST"
    assert seen.path == "/emails"
    expected_headers = {
        "authorization": f"Bearer {API_KEY}",
        "idempotency-key": email.idempotency_key,
        "content-type": "application/json",
        "user-agent": "bitloot-email",
    }
    assert {k: seen.headers.get(k) for k in expected_headers} == expected_headers
    assert [k for k, v in seen.headers.items() if API_KEY in v] == ["authorization"]
    assert seen.json == {
        "from": SENDER,
        "to": [RECIPIENT],
        "subject": email.subject,
        "text": email.text,
        "html": email.html,
    }


async def test_non_ascii_content_arrives_intact(
    fake: FakeResend, make_provider: MakeProvider
) -> None:
    """A subject with non-ASCII characters reaches Resend as the same text."""
    provider = make_provider()

    await provider.send(outgoing(subject="Ваш заказ оплачен — 🎮"))

    [delivered] = fake.delivered
    assert delivered.subject == "Ваш заказ оплачен — 🎮"


async def test_the_same_idempotency_key_twice_delivers_one_email(
    fake: FakeResend, make_provider: MakeProvider
) -> None:
    """A second send with the same key and body returns the first id, not a copy."""
    provider = make_provider()
    email = outgoing()

    first = await provider.send(email)
    second = await provider.send(email)

    assert second == first
    assert len(fake.requests) == 2
    assert [d.id for d in fake.delivered] == [first]


async def test_the_same_key_with_another_body_is_a_final_api_error(
    fake: FakeResend, make_provider: MakeProvider
) -> None:
    """A 409 invalid_idempotent_request is api_error and not retryable."""
    provider = make_provider()
    await provider.send(outgoing(key="otp:user-1", subject="Your code: 111111"))

    with pytest.raises(SendError) as caught:
        await provider.send(outgoing(key="otp:user-1", subject="Your code: 222222"))

    assert caught.value.reason == FailureReason.API_ERROR
    assert not caught.value.retryable
    assert caught.value.detail.startswith("Resend 409 invalid_idempotent_request: ")
    assert len(fake.delivered) == 1


async def test_a_send_while_the_same_key_is_in_progress_is_retryable(
    fake: FakeResend, make_provider: MakeProvider
) -> None:
    """A 409 concurrent_idempotent_requests is api_error and retryable."""
    provider = make_provider(timeout=1.0)
    email = outgoing()
    fake.script("hang")
    first = asyncio.create_task(provider.send(email))
    async with asyncio.timeout(1.0):
        await fake.wait_for_requests(1)

    with pytest.raises(SendError) as caught:
        await provider.send(email)

    assert caught.value.reason == FailureReason.API_ERROR
    assert caught.value.retryable
    assert "concurrent_idempotent_requests" in caught.value.detail
    with pytest.raises(SendError) as timed_out:
        await first
    assert timed_out.value.reason == FailureReason.TIMEOUT
    assert fake.delivered == []


@pytest.mark.parametrize("recipient", ["not-an-address", "two@@example.com", "@x"])
async def test_a_malformed_recipient_is_an_invalid_address_not_retried(
    fake: FakeResend, make_provider: MakeProvider, recipient: str
) -> None:
    """Resend's 422 validation_error is invalid_address and not retryable."""
    provider = make_provider()

    with pytest.raises(SendError) as caught:
        await provider.send(outgoing(recipient))

    assert caught.value.reason == FailureReason.INVALID_ADDRESS
    assert not caught.value.retryable
    assert caught.value.retry_after is None
    assert caught.value.detail == f"Resend 422 validation_error: {INVALID_TO}"
    assert recipient not in caught.value.detail
    assert len(fake.requests) == 1
    assert fake.delivered == []


async def test_a_scripted_validation_error_is_an_invalid_address(
    fake: FakeResend, make_provider: MakeProvider
) -> None:
    """A validation_error for a well-formed address is still invalid_address."""
    provider = make_provider()
    fake.script("validation_error")

    with pytest.raises(SendError) as caught:
        await provider.send(outgoing())

    assert caught.value.reason == FailureReason.INVALID_ADDRESS
    assert not caught.value.retryable
    assert fake.delivered == []


@pytest.mark.parametrize(
    ("behaviour", "message"),
    [
        ("validation_error_from", INVALID_FROM),
        ("validation_error_reply_to", INVALID_REPLY_TO),
        ("validation_error_subject", INVALID_SUBJECT),
    ],
)
async def test_a_validation_error_about_another_field_is_a_final_api_error(
    fake: FakeResend, make_provider: MakeProvider, behaviour: Behaviour, message: str
) -> None:
    """A bad From or subject is our mistake, not the recipient's: api_error, final."""
    provider = make_provider()
    fake.script(behaviour)

    with pytest.raises(SendError) as caught:
        await provider.send(outgoing())

    assert caught.value.reason == FailureReason.API_ERROR
    assert not caught.value.retryable
    assert caught.value.detail == f"Resend 422 validation_error: {message}"
    assert fake.delivered == []


async def test_a_429_is_a_retryable_api_error_with_retry_after(
    fake: FakeResend, make_provider: MakeProvider
) -> None:
    """A 429 rate_limit_exceeded carries the retry-after header's seconds."""
    provider = make_provider()
    fake.script("status_429")

    with pytest.raises(SendError) as caught:
        await provider.send(outgoing())

    assert caught.value.reason == FailureReason.API_ERROR
    assert caught.value.retryable
    assert caught.value.retry_after == 1.0
    assert caught.value.detail.startswith("Resend 429 rate_limit_exceeded: ")
    assert fake.delivered == []


async def test_a_500_is_a_retryable_api_error(
    fake: FakeResend, make_provider: MakeProvider
) -> None:
    """A 500 application_error is api_error, retryable, with no retry_after."""
    provider = make_provider()
    fake.script("status_500")

    with pytest.raises(SendError) as caught:
        await provider.send(outgoing())

    assert caught.value.reason == FailureReason.API_ERROR
    assert caught.value.retryable
    assert caught.value.retry_after is None
    assert caught.value.detail.startswith("Resend 500 application_error: ")


async def test_a_retry_after_a_500_delivers_the_email_once(
    fake: FakeResend, make_provider: MakeProvider
) -> None:
    """The caller's second attempt with the same key after a 500 goes through."""
    provider = make_provider()
    email = outgoing()
    fake.script("status_500")

    with pytest.raises(SendError):
        await provider.send(email)
    email_id = await provider.send(email)

    assert [d.id for d in fake.delivered] == [email_id]


async def test_a_hanging_resend_is_a_retryable_timeout(
    fake: FakeResend, make_provider: MakeProvider
) -> None:
    """No answer within the timeout is a timeout failure, retryable."""
    provider = make_provider(timeout=TIMEOUT)
    fake.script("hang")
    loop = asyncio.get_running_loop()
    started = loop.time()

    with pytest.raises(SendError) as caught:
        await provider.send(outgoing())

    assert loop.time() - started < TIMEOUT + 1.0
    assert caught.value.reason == FailureReason.TIMEOUT
    assert caught.value.retryable
    assert len(fake.requests) == 1


async def test_a_200_that_is_not_json_is_a_retryable_api_error(
    fake: FakeResend, make_provider: MakeProvider
) -> None:
    """A 200 with an HTML body is api_error, retryable, naming what came back."""
    provider = make_provider()
    fake.script("garbage")

    with pytest.raises(SendError) as caught:
        await provider.send(outgoing())

    assert caught.value.reason == FailureReason.API_ERROR
    assert caught.value.retryable
    assert "not a JSON object" in caught.value.detail
    assert "text/html" in caught.value.detail
    assert "glitch" not in caught.value.detail


async def test_a_wrong_api_key_is_a_final_api_error(
    fake: FakeResend, make_provider: MakeProvider
) -> None:
    """A 403 invalid_api_key is api_error and not retryable."""
    provider = make_provider(api_key="re_wrong_secret_key_123")

    with pytest.raises(SendError) as caught:
        await provider.send(outgoing())

    assert caught.value.reason == FailureReason.API_ERROR
    assert not caught.value.retryable
    assert caught.value.detail == "Resend 403 invalid_api_key: API key is invalid"
    assert fake.requests[0].headers["authorization"] == "Bearer re_wrong_secret_key_123"


async def test_a_non_json_error_is_classified_by_its_status(
    fake: FakeResend, make_provider: MakeProvider
) -> None:
    """A 404 with a plain-text body is api_error, not retryable, naming the status."""
    provider = make_provider(base_url=fake.base_url + "/nowhere/")

    with pytest.raises(SendError) as caught:
        await provider.send(outgoing())

    assert caught.value.reason == FailureReason.API_ERROR
    assert not caught.value.retryable
    assert caught.value.detail.startswith("Resend 404: the answer is not a JSON")


async def test_an_unreachable_resend_is_a_retryable_api_error(
    make_provider: MakeProvider,
) -> None:
    """A refused connection is api_error and retryable."""
    closed = FakeResend()
    base_url = await closed.start()
    await closed.stop()
    provider = make_provider(base_url=base_url)

    with pytest.raises(SendError) as caught:
        await provider.send(outgoing())

    assert caught.value.reason == FailureReason.API_ERROR
    assert caught.value.retryable
    assert caught.value.detail.startswith("Resend: connection failed")


async def test_a_recipient_echoed_by_resend_is_masked_in_the_detail(
    make_provider: MakeProvider,
) -> None:
    """An error message quoting the address, in any case, names "<recipient>"."""

    async def echo(request: web.Request) -> web.Response:
        to = (await request.json())["to"][0]
        message = f"Invalid `to` field: {to.upper()} and {to} ({API_KEY})" * 20
        body = {"statusCode": 422, "message": message, "name": "validation_error"}
        return web.json_response(body, status=422)

    app = web.Application()
    app.router.add_post("/emails", echo)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    try:
        port = runner.addresses[0][1]
        provider = make_provider(base_url=f"http://127.0.0.1:{port}")
        recipient = f"Shopper Name <{RECIPIENT}>"

        with pytest.raises(SendError) as caught:
            await provider.send(outgoing(recipient))
    finally:
        await runner.cleanup()

    detail = caught.value.detail
    assert caught.value.reason == FailureReason.INVALID_ADDRESS
    assert detail.startswith("Resend 422 validation_error: Invalid `to` field: ")
    assert "<recipient>" in detail
    assert RECIPIENT.lower() not in detail.lower()
    assert API_KEY not in detail
    assert len(detail) <= 300


@pytest.mark.parametrize(
    "behaviour",
    [
        "status_500",
        "status_429",
        "hang",
        "garbage",
        "validation_error",
        "validation_error_from",
    ],
)
async def test_no_failure_detail_names_the_recipient_the_key_or_the_content(
    fake: FakeResend, make_provider: MakeProvider, behaviour: Behaviour
) -> None:
    """Whatever fails, the detail carries no address, API key or email text."""
    provider = make_provider()
    fake.script(behaviour)
    email = outgoing()

    with pytest.raises(SendError) as caught:
        await provider.send(email)

    shown = f"{caught.value.detail} {caught.value.args!r} {caught.value!s}"
    for secret in (RECIPIENT, API_KEY, email.subject, "AAAA-BBBB-CCCC"):
        assert secret not in shown
    assert len(caught.value.detail) <= 300


def test_a_provider_without_a_key_or_a_positive_timeout_is_refused() -> None:
    """An empty key or a non-positive timeout is a ValueError at construction."""
    with pytest.raises(ValueError, match="API key"):
        ResendProvider(api_key="")
    with pytest.raises(ValueError, match="timeout"):
        ResendProvider(api_key=API_KEY, timeout=0)

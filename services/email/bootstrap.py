"""Wires the email service: provider, sender loop and the consumers that feed it."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

from aiohttp import web

from contracts.email import EmailFailed, EmailSent
from contracts.otp import EmailOtpRequested, UserRegistered
from contracts.payments import PaymentCompleted, PaymentCreated, PaymentUnderpaid
from services.email.handlers import EmailRequests
from services.email.metrics import EmailMetrics
from services.email.providers import EmailProvider
from services.email.resend import ResendProvider
from services.email.sender import EmailSender, RetryPolicy
from services.email.settings import EmailSettings
from services.email.smtp import SmtpProvider
from shared.consumer import EventHandler
from shared.service import ConsumerSpec, Runtime, ServiceSpec

# Codes have their own queue: a person waits at a login form for each one, and
# it must not queue behind a burst of order emails.
OTP_QUEUE = "email.otp"
NOTIFICATIONS_QUEUE = "email.notifications"
NOTIFICATION_TYPES = (
    UserRegistered.event_type,
    PaymentCreated.event_type,
    PaymentCompleted.event_type,
    PaymentUnderpaid.event_type,
)
METRICS = web.AppKey("email_metrics", EmailMetrics)
SENDER = web.AppKey("email_sender", EmailSender)
REQUESTS = web.AppKey("email_requests", EmailRequests)


def setup(runtime: Runtime[EmailSettings]) -> None:
    runtime.app[METRICS] = EmailMetrics(runtime.metrics.registry)


def make_provider(settings: EmailSettings) -> EmailProvider:
    """The provider the settings name; a Resend key is checked at start."""
    if settings.email_provider == "resend":
        assert settings.resend_api_key is not None
        return ResendProvider(
            api_key=settings.resend_api_key.get_secret_value(),
            base_url=settings.resend_api_url,
            timeout=settings.resend_timeout_seconds,
        )
    password = settings.smtp_password
    return SmtpProvider(
        host=settings.smtp_host,
        port=settings.smtp_port,
        username=settings.smtp_username,
        password=None if password is None else password.get_secret_value(),
        security=settings.smtp_security,
        timeout=settings.smtp_timeout_seconds,
    )


async def serve_emails(runtime: Runtime[EmailSettings]) -> AsyncIterator[None]:
    """Run the sender while the service runs; finish its sends on the way out."""
    settings = runtime.settings
    provider = make_provider(settings)
    metrics = runtime.app[METRICS]
    sender = EmailSender(
        runtime.require_pool(),
        provider,
        metrics,
        sender_address=settings.email_from,
        retry=RetryPolicy(
            max_attempts=settings.email_max_attempts,
            base_seconds=settings.email_retry_base_seconds,
            max_seconds=settings.email_retry_max_seconds,
        ),
        concurrency=settings.email_send_concurrency,
        lease_seconds=settings.email_lease_seconds,
        poll_seconds=settings.email_poll_seconds,
    )
    runtime.app[SENDER] = sender
    runtime.app[REQUESTS] = EmailRequests(metrics, sender.wake)
    await sender.start()
    yield
    await sender.stop(timeout=settings.shutdown_timeout_seconds)
    await provider.close()


def _requests_handler(runtime: Runtime[EmailSettings]) -> EventHandler:
    return runtime.app[REQUESTS].record


SPEC = ServiceSpec(
    name="email",
    schema="email",
    settings_class=EmailSettings,
    migrations_dir=Path(__file__).parent / "migrations",
    setup=setup,
    published_types=(EmailSent.event_type, EmailFailed.event_type),
    unconsumed_types=(EmailSent.event_type, EmailFailed.event_type),
    contexts=(serve_emails,),
    consumers=(
        ConsumerSpec(OTP_QUEUE, (EmailOtpRequested.event_type,), _requests_handler),
        ConsumerSpec(NOTIFICATIONS_QUEUE, NOTIFICATION_TYPES, _requests_handler),
    ),
)

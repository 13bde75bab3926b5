"""The email service's own metrics, every label series present from start-up."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

from services.email.domain import EmailType, FailureReason
from services.email.providers import RESEND, SMTP
from shared.metrics import LATENCY_BUCKETS

REQUEST_OUTCOMES = ("new", "duplicate")


class EmailMetrics:
    def __init__(self, registry: CollectorRegistry) -> None:
        self.send_success = Counter(
            "bitloot_email_send_success",
            "Emails a provider accepted, by type.",
            ["type"],
            registry=registry,
        )
        self.send_failed = Counter(
            "bitloot_email_send_failed",
            "Emails given up on, by type and reason: refused, or every attempt failed.",
            ["type", "reason"],
            registry=registry,
        )
        self.send_retries = Counter(
            "bitloot_email_send_retries",
            "Failed attempts that will be tried again, by type and reason.",
            ["type", "reason"],
            registry=registry,
        )
        self.requested = Counter(
            "bitloot_emails_requested",
            "Events asking for an email, by type and whether the fact was new.",
            ["type", "outcome"],
            registry=registry,
        )
        self.send_duration = Histogram(
            "bitloot_email_send_duration_seconds",
            "Time one send attempt took, by provider.",
            ["provider"],
            buckets=LATENCY_BUCKETS,
            registry=registry,
        )
        self.queue_depth = Gauge(
            "bitloot_email_queue_depth",
            "Emails not yet sent or given up on.",
            registry=registry,
        )
        self.oldest_waiting_age = Gauge(
            "bitloot_email_oldest_waiting_age_seconds",
            "Age of the oldest email not yet sent or given up on.",
            registry=registry,
        )
        for email_type in EmailType:
            self.send_success.labels(type=email_type.value)
            for outcome in REQUEST_OUTCOMES:
                self.requested.labels(type=email_type.value, outcome=outcome)
            for reason in FailureReason:
                self.send_failed.labels(type=email_type.value, reason=reason.value)
                self.send_retries.labels(type=email_type.value, reason=reason.value)
        for provider in (SMTP, RESEND):
            self.send_duration.labels(provider=provider)

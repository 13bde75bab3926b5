"""webhook-ingest's own metrics, every label series present from start-up."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Histogram

from services.webhook_ingest.domain import Outcome, Provider, RejectionReason


class WebhookMetrics:
    def __init__(self, registry: CollectorRegistry) -> None:
        self.invalid_hmac = Counter(
            "bitloot_invalid_hmac_count",
            "Webhooks refused because their signature or secret did not verify.",
            ["provider", "reason"],
            registry=registry,
        )
        self.duplicates = Counter(
            "bitloot_duplicate_webhook_count",
            "Webhook deliveries of a provider event that was already stored.",
            ["provider"],
            registry=registry,
        )
        self.deliveries = Counter(
            "bitloot_webhook_deliveries",
            "Webhook deliveries answered, by provider and outcome.",
            ["provider", "outcome"],
            registry=registry,
        )
        self.commit_batch = Histogram(
            "bitloot_webhook_commit_batch_size",
            "Deliveries stored together in one database commit.",
            buckets=(1, 2, 4, 8, 16, 32, 64, 128, 256, 512),
            registry=registry,
        )
        for provider in Provider:
            self.duplicates.labels(provider=provider.value)
            for reason in RejectionReason:
                self.invalid_hmac.labels(provider=provider.value, reason=reason.value)
            for outcome in (*Outcome, "rejected"):
                self.deliveries.labels(provider=provider.value, outcome=str(outcome))

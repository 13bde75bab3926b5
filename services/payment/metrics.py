"""The payment service's own metrics, every label series present from start-up."""

from __future__ import annotations

from enum import StrEnum

from prometheus_client import CollectorRegistry, Counter, Histogram

from services.payment.domain import ASSET_LABELS, PaymentStatus
from shared.metrics import LATENCY_BUCKETS


class IpnOutcome(StrEnum):
    """What an IPN did: moved a payment, repeated its status, came too late,
    topped up an earlier payment, or named a payment this service never opened."""

    APPLIED = "applied"
    UNCHANGED = "unchanged"
    STALE = "stale"
    DEPOSIT = "deposit"
    UNKNOWN_PAYMENT = "unknown_payment"


class FulfilmentOutcome(StrEnum):
    APPLIED = "applied"
    STALE = "stale"
    UNKNOWN_ORDER = "unknown_order"
    IGNORED = "ignored"


PROVIDER_OUTCOMES = ("ok", "refused", "timeout", "unavailable")
PROVIDERS = ("simulator", "nowpayments")


class PaymentMetrics:
    def __init__(self, registry: CollectorRegistry) -> None:
        self.underpaid_orders = Counter(
            "bitloot_underpaid_orders",
            "Orders marked underpaid, once each, by the asset paid in.",
            ["asset"],
            registry=registry,
        )
        self.payments = Counter(
            "bitloot_payments",
            "Payments that reached each status, by asset.",
            ["status", "asset"],
            registry=registry,
        )
        self.ipns = Counter(
            "bitloot_payment_ipns",
            "NOWPayments IPNs handled, by what they did.",
            ["outcome"],
            registry=registry,
        )
        self.fulfilment_updates = Counter(
            "bitloot_kinguin_order_updates",
            "Kinguin webhooks handled, by what they did to an order's fulfilment.",
            ["outcome"],
            registry=registry,
        )
        self.provider_requests = Counter(
            "bitloot_payment_provider_requests",
            "Attempts to open a payment at the provider, by outcome.",
            ["provider", "outcome"],
            registry=registry,
        )
        self.provider_duration = Histogram(
            "bitloot_payment_provider_duration_seconds",
            "Time to open a payment at the provider, retries included.",
            ["provider"],
            buckets=LATENCY_BUCKETS,
            registry=registry,
        )
        for asset in ASSET_LABELS:
            self.underpaid_orders.labels(asset=asset)
            for status in PaymentStatus:
                self.payments.labels(status=status.value, asset=asset)
        for ipn_outcome in IpnOutcome:
            self.ipns.labels(outcome=ipn_outcome.value)
        for fulfilment_outcome in FulfilmentOutcome:
            self.fulfilment_updates.labels(outcome=fulfilment_outcome.value)
        for provider in PROVIDERS:
            self.provider_duration.labels(provider=provider)
            for outcome in PROVIDER_OUTCOMES:
                self.provider_requests.labels(provider=provider, outcome=outcome)

"""Events published by webhook-ingest once a delivery is verified and stored."""

from __future__ import annotations

import uuid
from datetime import datetime
from typing import Any

from pydantic import Field

from contracts.envelope import EventData, register


@register
class NowPaymentsIpnReceived(EventData):
    """A NOWPayments IPN whose signature verified; the body exactly as sent."""

    event_type = "webhook.nowpayments.received"

    delivery_id: uuid.UUID = Field(description="webhook-ingest's id of the delivery.")
    received_at: datetime
    payment_id: str = Field(description="NOWPayments' payment_id, as text.")
    payment_status: str = Field(description="NOWPayments' payment_status.")
    body: dict[str, Any] = Field(
        description="The IPN body. Amounts are JSON numbers as NOWPayments sent them."
    )


@register
class KinguinWebhookReceived(EventData):
    """A Kinguin webhook whose shared secret matched."""

    event_type = "webhook.kinguin.received"

    delivery_id: uuid.UUID
    received_at: datetime
    event_name: str = Field(description="The X-Event-Name header, e.g. order.status.")
    body: dict[str, Any]

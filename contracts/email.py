"""Events of the email service: one per email, sent or given up on.

Neither carries the address or the content: what was sent is identified by its
type and idempotency key, which name the business fact behind it.
"""

from __future__ import annotations

from typing import Literal

from pydantic import Field

from contracts.envelope import EventData, register

EmailTypeName = Literal[
    "otp", "welcome", "payment_created", "payment_completed", "underpaid"
]


@register
class EmailSent(EventData):
    """A provider accepted an email for delivery."""

    event_type = "email.sent"

    type: EmailTypeName = Field(description="What the email is about.")
    idempotency_key: str = Field(description="<type>:<business key>, one per fact.")
    provider: str = Field(description="smtp or resend.")
    provider_message_id: str = Field(description="The provider's id for the email.")
    attempts: int = Field(ge=1, description="Sends tried, this one included.")


@register
class EmailFailed(EventData):
    """An email was given up on: refused, or failing after every attempt."""

    event_type = "email.failed"

    type: EmailTypeName = Field(description="What the email is about.")
    idempotency_key: str = Field(description="<type>:<business key>, one per fact.")
    provider: str = Field(description="smtp or resend.")
    reason: Literal["timeout", "api_error", "invalid_address"] = Field(
        description="Why, as bitloot_email_send_failed_total counts it."
    )
    attempts: int = Field(ge=0, description="Sends tried before giving up.")

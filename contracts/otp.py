"""Events of the otp service: a code issued, a code to email, a user registered.

The code itself travels in ``email.otp.requested`` alone, the command the
email service turns into the code email; ``otp.issued`` records the fact
without it.
"""

from __future__ import annotations

import uuid
from datetime import datetime
from typing import Annotated

from pydantic import Field

from contracts.envelope import EventData, register

SixDigits = Annotated[str, Field(pattern=r"^[0-9]{6}$")]


@register
class OtpIssued(EventData):
    """A login code was issued for an address (the code is not in here)."""

    event_type = "otp.issued"

    request_id: uuid.UUID = Field(description="This request for a code.")
    email_hash: str = Field(
        description="Keyed hash of the lower-cased address, never the address."
    )
    expires_at: datetime = Field(description="When the code stops working, UTC.")


@register
class EmailOtpRequested(EventData):
    """Send this login code to this address: the only message with a code."""

    event_type = "email.otp.requested"

    request_id: uuid.UUID = Field(
        description="This request for a code; one email per request."
    )
    email: str = Field(description="Where to send the code.")
    code: SixDigits = Field(description="The one-time code, six digits.")
    expires_at: datetime = Field(description="When the code stops working, UTC.")


@register
class UserRegistered(EventData):
    """An address logged in for the first time and became a user."""

    event_type = "user.registered"

    user_id: uuid.UUID = Field(description="The new user's id.")
    email: str = Field(description="The user's address, for the welcome email.")

"""Emails: their types, idempotency keys, failure reasons and retry timing; no I/O."""

from __future__ import annotations

import re
from dataclasses import dataclass
from email.utils import parseaddr
from enum import StrEnum

RECIPIENT_MASK = "<recipient>"


class EmailType(StrEnum):
    """What an email is about; each type has its own templates."""

    OTP = "otp"
    WELCOME = "welcome"
    PAYMENT_CREATED = "payment_created"
    PAYMENT_COMPLETED = "payment_completed"
    UNDERPAID = "underpaid"


class FailureReason(StrEnum):
    """Why a send failed, as bitloot_email_send_failed_total counts it."""

    TIMEOUT = "timeout"
    API_ERROR = "api_error"
    INVALID_ADDRESS = "invalid_address"


# The OTP email goes first: a person is waiting at a login form for it.
PRIORITY: dict[EmailType, int] = {
    EmailType.OTP: 0,
    EmailType.WELCOME: 2,
    EmailType.PAYMENT_CREATED: 1,
    EmailType.PAYMENT_COMPLETED: 1,
    EmailType.UNDERPAID: 1,
}


def idempotency_key(email_type: EmailType, business_key: str) -> str:
    """One key per business fact: ``payment_completed:<order_id>``."""
    return f"{email_type.value}:{business_key}"


@dataclass(frozen=True)
class OutgoingEmail:
    """One rendered email, ready for a provider."""

    idempotency_key: str
    email_type: EmailType
    sender: str
    recipient: str
    subject: str
    text: str
    html: str


class SendError(Exception):
    """A provider did not take the email.

    ``retryable`` says whether asking again later may succeed (a timeout, a
    5xx, a 429, a greylisting 4xx); an invalid address never is.
    """

    def __init__(
        self,
        reason: FailureReason,
        detail: str,
        *,
        retryable: bool,
        retry_after: float | None = None,
    ) -> None:
        super().__init__(detail)
        self.reason = reason
        self.detail = detail
        self.retryable = retryable
        self.retry_after = retry_after


# A send may take this share of its lease; the rest is left for recording the
# outcome, so that the write lands while the claim is still this instance's.
SEND_SHARE_OF_LEASE = 0.75


def send_budget(lease_seconds: float) -> float:
    """Seconds one send may take, under a lease of ``lease_seconds``."""
    return lease_seconds * SEND_SHARE_OF_LEASE


def retry_delay(attempts: int, base: float, cap: float) -> float:
    """Seconds before the next try after ``attempts`` failed ones: doubling."""
    return float(min(cap, base * 2 ** max(attempts - 1, 0)))


def mask_recipient(text: str, *addresses: str) -> str:
    """``text`` with each address masked as ``<recipient>``, in whatever case.

    Servers quote an address as given, bare, or in angle brackets, and often
    change its case. The longest form goes first, so that ``Name <a@b>`` and
    ``<a@b>`` become one mask rather than leaving a name or brackets around it.
    """
    forms = set()
    for given in addresses:
        bare = parseaddr(given)[1].strip()
        forms.update({given.strip(), bare, f"<{bare}>" if bare else ""})
    for form in sorted((form for form in forms if form), key=len, reverse=True):
        text = re.sub(re.escape(form), RECIPIENT_MASK, text, flags=re.IGNORECASE)
    return text

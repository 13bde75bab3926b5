"""What makes a webhook delivery acceptable, and what identifies it; no I/O."""

from __future__ import annotations

import hashlib
import json
import re
import uuid
from dataclasses import dataclass
from datetime import datetime
from enum import StrEnum
from typing import Any


class Provider(StrEnum):
    NOWPAYMENTS = "nowpayments"
    KINGUIN = "kinguin"


class RejectionReason(StrEnum):
    """Why a delivery's signature was not accepted; labels of the HMAC counter."""

    MISSING_SECRET = "missing_secret"
    VERIFICATION_FAILED = "verification_failed"
    EXCEPTION = "exception"


class Outcome(StrEnum):
    ACCEPTED = "accepted"
    DUPLICATE = "duplicate"


class IncompleteDeliveryError(ValueError):
    """The body lacks a field the provider always sends."""


class MalformedFieldError(ValueError):
    """A field the provider always sends holds something no provider would send."""


_REFERENCE = re.compile(r"[\x21-\x7e]{1,128}")
NOWPAYMENTS_REQUIRED = ("payment_id", "payment_status")
# Kinguin's documented events and the fields each always carries; other event
# names are stored and published as they come.
KINGUIN_REQUIRED: dict[str, tuple[str, ...]] = {
    "order.status": ("orderId", "status", "updatedAt"),
    "product.update": ("productId", "updatedAt"),
}


@dataclass(frozen=True)
class Delivery:
    """One verified webhook, ready to be stored and published."""

    id: uuid.UUID
    provider: Provider
    event_name: str
    dedup_key: str
    reference: str
    raw_body: bytes
    body: dict[str, Any]
    received_at: datetime


def require_fields(body: dict[str, Any], fields: tuple[str, ...], what: str) -> None:
    missing = [name for name in fields if body.get(name) in (None, "")]
    if missing:
        raise IncompleteDeliveryError(f"{what} lacks {', '.join(missing)}")


def as_reference(value: Any, field: str) -> str:
    """A provider's id as text: a whole number or a short string of visible text."""
    if isinstance(value, int) and not isinstance(value, bool):
        return str(value)
    if isinstance(value, str) and _REFERENCE.fullmatch(value):
        return value
    raise MalformedFieldError(f"{field} is not an id: {str(value)[:40]!r}")


def nowpayments_dedup_key(canonical_body: str) -> str:
    """The same IPN, resent, has the same canonical body whatever its whitespace."""
    return hashlib.sha256(canonical_body.encode()).hexdigest()


def kinguin_dedup_key(event_name: str, body: dict[str, Any]) -> str:
    canonical = json.dumps(body, sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(f"{event_name}\n{canonical}".encode()).hexdigest()


def kinguin_reference(event_name: str, body: dict[str, Any]) -> str:
    """The order or product the event is about, to find its deliveries by."""
    for field in ("orderId", "productId", "kinguinId"):
        if body.get(field) not in (None, ""):
            return as_reference(body[field], field)
    return event_name

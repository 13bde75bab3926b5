"""Login codes: making, hashing and judging them, and the request windows; no I/O."""

from __future__ import annotations

import hashlib
import hmac
import ipaddress
import math
import secrets
import uuid
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from enum import StrEnum

from shared.auth import METRICS_SCOPE

CODE_DIGITS = 6
CODE_LIFETIME = timedelta(minutes=5)
MAX_WRONG_TRIES = 5
ADDRESS_REQUESTS_PER_WINDOW = 3
REQUEST_WINDOW = timedelta(seconds=60)
# The span over which an address's wrong codes count, across all its codes.
FAILURE_WINDOW = timedelta(hours=1)

# An IPv6 site is routinely given a /64 at least, so one client owns all of it.
IPV6_CLIENT_PREFIX = 64

USER_SCOPE = "user"

Clock = Callable[[], datetime]


def utc_now() -> datetime:
    """The wall clock, in UTC: what a running service tells time by."""
    return datetime.now(UTC)


class VerificationFailure(StrEnum):
    """Why a code was not accepted, as bitloot_otp_verification_failed_total counts."""

    INVALID_CODE = "invalid_code"
    EXPIRED = "expired"
    TOO_MANY_ATTEMPTS = "too_many_attempts"


def generate_code(draw: Callable[[int], int] = secrets.randbelow) -> str:
    """Six digits from the operating system's randomness; leading zeros kept."""
    return f"{draw(10**CODE_DIGITS):0{CODE_DIGITS}d}"


def normalise_email(address: str) -> str:
    """The one spelling of an address that its hash, limits and user are keyed by."""
    return address.strip().lower()


def client_key(host: str) -> str:
    """What a client's request window is keyed by: its IPv4 address or IPv6 /64.

    Keyed by the full IPv6 address, one machine could draw a fresh identity for
    every request from its 2**64 addresses. An IPv4 address mapped into IPv6, as
    a dual-stack socket reports it, is that IPv4 address; anything that is not
    an IP address is used as it is.
    """
    try:
        address = ipaddress.ip_address(host)
    except ValueError:
        return host
    if isinstance(address, ipaddress.IPv4Address):
        return str(address)
    if address.ipv4_mapped is not None:
        return str(address.ipv4_mapped)
    network = ipaddress.IPv6Network((int(address), IPV6_CLIENT_PREFIX), strict=False)
    return str(network)


@dataclass(frozen=True)
class KeyedHasher:
    """HMAC-SHA256 under the server's secret, one purpose prefix per kind of value.

    Without the secret, a stolen table cannot be turned back into codes by trying
    all million of them, nor into addresses by hashing a list of known ones.
    """

    secret: bytes

    def email(self, address: str) -> bytes:
        return self._digest(b"email", normalise_email(address).encode())

    def client(self, host: str) -> bytes:
        return self._digest(b"client", host.encode())

    def code(self, request_id: uuid.UUID, code: str) -> bytes:
        """A code's hash, bound to its request so no other request's code matches."""
        return self._digest(b"code", request_id.bytes + code.encode())

    def code_matches(self, request_id: uuid.UUID, given: str, stored: bytes) -> bool:
        """Compare in constant time, so timing tells nothing about the code."""
        return hmac.compare_digest(self.code(request_id, given), stored)

    def _digest(self, purpose: bytes, value: bytes) -> bytes:
        return hmac.new(self.secret, purpose + b"\x00" + value, hashlib.sha256).digest()


@dataclass(frozen=True)
class SlidingWindow:
    """At most ``limit`` requests in any span of ``length``."""

    limit: int
    length: timedelta

    def opened_at(self, now: datetime) -> datetime:
        """Requests at or before this moment have left the window."""
        return now - self.length

    def retry_after(self, recent: Sequence[datetime], now: datetime) -> int | None:
        """None when one more request fits; else whole seconds until one does.

        That is when the oldest request that keeps the window full leaves it,
        rounded up, and never less than a second.
        """
        inside = sorted(moment for moment in recent if moment > self.opened_at(now))
        if len(inside) < self.limit:
            return None
        leaves_at = inside[len(inside) - self.limit] + self.length
        return max(1, math.ceil((leaves_at - now).total_seconds()))


ADDRESS_WINDOW = SlidingWindow(ADDRESS_REQUESTS_PER_WINDOW, REQUEST_WINDOW)


@dataclass(frozen=True)
class IssuedCode:
    """The live code of one address, as stored: its hash, never the code."""

    request_id: uuid.UUID
    code_hash: bytes
    expires_at: datetime
    wrong_tries: int


def judge_code(
    issued: IssuedCode | None, given: str, now: datetime, hasher: KeyedHasher
) -> VerificationFailure | None:
    """Why ``given`` does not log in, or None when it does.

    A code that had its last wrong try stays dead, the right code included, until
    a new request replaces it; no code at all looks like a wrong one.
    """
    if issued is None:
        return VerificationFailure.INVALID_CODE
    if issued.wrong_tries >= MAX_WRONG_TRIES:
        return VerificationFailure.TOO_MANY_ATTEMPTS
    if now >= issued.expires_at:
        return VerificationFailure.EXPIRED
    if not hasher.code_matches(issued.request_id, given, issued.code_hash):
        return VerificationFailure.INVALID_CODE
    return None


def scopes_for(address: str, admin_emails: frozenset[str]) -> list[str]:
    """What a login token grants: administrators also read every service's metrics."""
    if normalise_email(address) in admin_emails:
        return [USER_SCOPE, METRICS_SCOPE]
    return [USER_SCOPE]

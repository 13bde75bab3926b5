"""The otp service's use cases: issue a code, exchange a code for a token, sweep.

Each change of state commits in one transaction with the events it stages.
"""

from __future__ import annotations

import uuid
from dataclasses import dataclass
from datetime import timedelta

import asyncpg
import structlog

from contracts.envelope import wrap
from contracts.otp import EmailOtpRequested, OtpIssued, UserRegistered
from services.otp import store
from services.otp.domain import (
    ADDRESS_WINDOW,
    CODE_LIFETIME,
    REQUEST_WINDOW,
    Clock,
    KeyedHasher,
    SlidingWindow,
    VerificationFailure,
    generate_code,
    judge_code,
    normalise_email,
    scopes_for,
)
from services.otp.metrics import ISSUE, OtpMetrics
from shared.auth import METRICS_SCOPE, TokenIssuer
from shared.logging import mask_email
from shared.outbox import add_to_outbox

logger = structlog.get_logger(__name__)

PRODUCER = "otp"
# An expired code answers `expired` for this long before the sweep forgets it.
EXPIRED_CODE_MEMORY = timedelta(hours=1)


class RateLimitedError(Exception):
    """Too many requests for a code; ``retry_after`` says when one more fits."""

    def __init__(self, retry_after: int, limit: str) -> None:
        super().__init__(f"too many requests for a code; retry in {retry_after} s")
        self.retry_after = retry_after
        self.limit = limit


class VerificationFailedError(Exception):
    """The code did not log in, for ``reason``."""

    def __init__(self, reason: VerificationFailure) -> None:
        super().__init__(reason.value)
        self.reason = reason


@dataclass(frozen=True)
class RequestCode:
    email: str
    client: str
    correlation_id: str


@dataclass(frozen=True)
class VerifyCode:
    email: str
    code: str
    correlation_id: str


@dataclass(frozen=True)
class LoginToken:
    access_token: str
    expires_in: int


class OtpService:
    """Codes by email, bounded per address and per client, exchanged for tokens."""

    def __init__(
        self,
        pool: asyncpg.Pool,
        hasher: KeyedHasher,
        issuer: TokenIssuer,
        metrics: OtpMetrics,
        clock: Clock,
        *,
        admin_emails: frozenset[str],
        client_window: SlidingWindow,
        token_ttl_seconds: int,
    ) -> None:
        self._pool = pool
        self._hasher = hasher
        self._issuer = issuer
        self._metrics = metrics
        self._clock = clock
        self._admin_emails = admin_emails
        self._client_window = client_window
        self._token_ttl = token_ttl_seconds

    async def request_code(self, command: RequestCode) -> timedelta:
        """Issue a code for the address and stage its email; return its lifetime.

        Whether the address has logged in before changes nothing here.
        """
        now = self._clock()
        email = normalise_email(command.email)
        email_hash = self._hasher.email(email)
        client_hash = self._hasher.client(command.client)
        request_id = uuid.uuid4()
        code = generate_code()
        expires_at = now + CODE_LIFETIME
        since = min(ADDRESS_WINDOW.opened_at(now), self._client_window.opened_at(now))

        async with self._pool.acquire() as connection, connection.transaction():
            await store.lock_requests(connection, email_hash, client_hash)
            by_address, by_client = await store.requests_since(
                connection, email_hash, client_hash, since
            )
            refusal = _refusal(
                ("address", ADDRESS_WINDOW.retry_after(by_address, now)),
                ("client", self._client_window.retry_after(by_client, now)),
            )
            if refusal is None:
                await store.record_request(connection, email_hash, client_hash, now)
                await store.replace_code(
                    connection,
                    email_hash,
                    request_id,
                    self._hasher.code(request_id, code),
                    now,
                    expires_at,
                )
                issued = OtpIssued(
                    request_id=request_id,
                    email_hash=email_hash.hex(),
                    expires_at=expires_at,
                )
                to_send = EmailOtpRequested(
                    request_id=request_id, email=email, code=code, expires_at=expires_at
                )
                await add_to_outbox(
                    connection,
                    [
                        wrap(event, PRODUCER, command.correlation_id, now)
                        for event in (issued, to_send)
                    ],
                )

        if refusal is not None:
            self._metrics.rate_limit_exceeded.labels(operation=ISSUE).inc()
            logger.warning(
                "otp_rate_limited",
                email=mask_email(email),
                limit=refusal.limit,
                retry_after=refusal.retry_after,
            )
            raise refusal
        self._metrics.codes_issued.inc()
        logger.info("otp_issued", email=mask_email(email), request_id=str(request_id))
        return CODE_LIFETIME

    async def verify_code(self, command: VerifyCode) -> LoginToken:
        """Exchange the address's live code for a token; the first login registers."""
        now = self._clock()
        email = normalise_email(command.email)
        email_hash = self._hasher.email(email)
        user_id: uuid.UUID | None = None
        registered = False

        async with self._pool.acquire() as connection, connection.transaction():
            issued = await store.lock_code(connection, email_hash)
            failure = judge_code(issued, command.code, now, self._hasher)
            if failure is VerificationFailure.INVALID_CODE and issued is not None:
                await store.record_wrong_try(connection, email_hash)
            if failure is None:
                await store.use_code(connection, email_hash)
                user_id, registered = await store.record_login(connection, email, now)
                if registered:
                    event = UserRegistered(user_id=user_id, email=email)
                    await add_to_outbox(
                        connection, [wrap(event, PRODUCER, command.correlation_id, now)]
                    )

        if failure is not None:
            self._metrics.verification_failed.labels(reason=failure.value).inc()
            logger.info("otp_refused", email=mask_email(email), reason=failure.value)
            raise VerificationFailedError(failure)
        assert user_id is not None, "a login always finds or makes its user"

        scopes = scopes_for(email, self._admin_emails)
        role = "admin" if METRICS_SCOPE in scopes else "user"
        token = self._issuer.mint(str(user_id), scopes, self._token_ttl)
        self._metrics.logins.labels(role=role).inc()
        logger.info(
            "otp_login",
            user_id=str(user_id),
            role=role,
            registered=registered,
        )
        return LoginToken(access_token=token, expires_in=self._token_ttl)

    async def sweep(self) -> tuple[int, int]:
        """Forget requests no window counts and codes expired for a while."""
        now = self._clock()
        oldest_window = max(REQUEST_WINDOW, self._client_window.length)
        return await store.sweep(
            self._pool, now - oldest_window, now - EXPIRED_CODE_MEMORY
        )


def _refusal(*checks: tuple[str, int | None]) -> RateLimitedError | None:
    """The refusal of the limits that are full, waiting for the slowest of them."""
    full = [(wait, limit) for limit, wait in checks if wait is not None]
    if not full:
        return None
    wait, limit = max(full)
    return RateLimitedError(wait, limit)

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
    client_key,
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


class AddressLockedError(VerificationFailedError):
    """The address spent its budget of wrong codes; ``retry_after`` says until when."""

    def __init__(self, retry_after: int) -> None:
        super().__init__(VerificationFailure.TOO_MANY_ATTEMPTS)
        self.retry_after = retry_after


@dataclass(frozen=True)
class RequestCode:
    email: str
    client: str  # the peer's IP address as the socket reports it
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
        failure_window: SlidingWindow,
        token_ttl_seconds: int,
    ) -> None:
        self._pool = pool
        self._hasher = hasher
        self._issuer = issuer
        self._metrics = metrics
        self._clock = clock
        self._admin_emails = admin_emails
        self._client_window = client_window
        self._failure_window = failure_window
        self._token_ttl = token_ttl_seconds

    async def request_code(self, command: RequestCode) -> timedelta:
        """Issue a code for the address and stage its email; return its lifetime.

        Whether the address has logged in before changes nothing here.
        """
        now = self._clock()
        email = normalise_email(command.email)
        email_hash = self._hasher.email(email)
        client_hash = self._hasher.client(client_key(command.client))
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
        """Exchange the address's live code for a token; the first login registers.

        Every wrong code counts against the address's budget, whichever code it
        was meant for; once the budget is spent the address is refused, the
        right code included, until enough of its failures leave the window.
        """
        now = self._clock()
        email = normalise_email(command.email)
        email_hash = self._hasher.email(email)
        window = self._failure_window
        user_id: uuid.UUID | None = None
        registered = False
        locked_from_now: int | None = None

        async with self._pool.acquire() as connection, connection.transaction():
            await store.lock_address(connection, email_hash)
            failures = await store.failures_since(
                connection, email_hash, window.opened_at(now)
            )
            locked_for = window.retry_after(failures, now)
            # A refusal while locked compares no code and is not recorded: it
            # teaches a guesser nothing, and recording it would let anyone who
            # keeps knocking hold the address locked for ever.
            if locked_for is None:
                issued = await store.lock_code(connection, email_hash)
                failure = judge_code(issued, command.code, now, self._hasher)
            else:
                issued, failure = None, VerificationFailure.TOO_MANY_ATTEMPTS
            if failure is VerificationFailure.INVALID_CODE and issued is not None:
                await store.record_wrong_try(connection, email_hash)
                await store.record_failure(connection, email_hash, now)
                locked_from_now = window.retry_after([*failures, now], now)
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
            logger.info(
                "otp_refused",
                email=mask_email(email),
                reason=failure.value,
                address_locked=locked_for is not None,
            )
            if locked_from_now is not None:
                logger.warning(
                    "otp_address_locked",
                    email=mask_email(email),
                    failures=window.limit,
                    window_seconds=int(window.length.total_seconds()),
                    retry_after=locked_from_now,
                )
            if locked_for is not None:
                raise AddressLockedError(locked_for)
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

    async def sweep(self) -> store.Swept:
        """Forget requests and failures no window counts, and long expired codes."""
        now = self._clock()
        oldest_window = max(REQUEST_WINDOW, self._client_window.length)
        return await store.sweep(
            self._pool,
            now - oldest_window,
            self._failure_window.opened_at(now),
            now - EXPIRED_CODE_MEMORY,
        )


def _refusal(*checks: tuple[str, int | None]) -> RateLimitedError | None:
    """The refusal of the limits that are full, waiting for the slowest of them."""
    full = [(wait, limit) for limit, wait in checks if wait is not None]
    if not full:
        return None
    wait, limit = max(full)
    return RateLimitedError(wait, limit)

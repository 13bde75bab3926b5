"""Sending owed emails: claim, render, send, record the outcome with its event.

Emails are recorded before they are sent (see ``handlers``); this loop takes
due rows with a lease, sends outside any transaction, and records the outcome
and ``email.sent`` / ``email.failed`` in one transaction. A transient failure
puts the row back with a growing delay; the last attempt, or a refusal no
retry can change, fails it. A row whose sender died mid-send is tried again
only with a provider that drops repeated idempotency keys; over SMTP it is
failed as ``timeout`` rather than risk a second email.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from datetime import UTC, datetime

import asyncpg
import structlog
from email_validator import EmailNotValidError, validate_email

from contracts.email import EmailFailed, EmailSent
from contracts.envelope import wrap
from services.email import store
from services.email.domain import (
    FailureReason,
    OutgoingEmail,
    SendError,
    mask_recipient,
    retry_delay,
    send_budget,
)
from services.email.metrics import EmailMetrics
from services.email.providers import EmailProvider
from services.email.rendering import TemplateDataError, render
from shared.db import Connection
from shared.outbox import add_to_outbox

logger = structlog.get_logger(__name__)

PRODUCER = "email"
ABANDONED_BATCH = 50
# Writing an outcome survives a database blip of about half a minute; longer,
# and the lease runs out and the abandoned-send rule decides instead.
RECORD_DELAYS = (0.5, 1.0, 2.0, 4.0, 8.0, 16.0)
# After an unexpected error the loop waits, doubling from its poll interval.
MAX_BACKOFF_SECONDS = 30.0


@dataclass(frozen=True)
class RetryPolicy:
    max_attempts: int
    base_seconds: float
    max_seconds: float


class EmailSender:
    """Sends due emails, up to ``concurrency`` at once, until stopped."""

    def __init__(
        self,
        pool: asyncpg.Pool,
        provider: EmailProvider,
        metrics: EmailMetrics,
        *,
        sender_address: str,
        retry: RetryPolicy,
        concurrency: int,
        lease_seconds: float,
        poll_seconds: float,
    ) -> None:
        self._pool = pool
        self._provider = provider
        self._metrics = metrics
        self._from = sender_address
        self._retry = retry
        self._concurrency = concurrency
        self._lease_seconds = lease_seconds
        self._send_seconds = send_budget(lease_seconds)
        self._poll_seconds = poll_seconds
        self._wake = asyncio.Event()
        self._stopped = asyncio.Event()
        self._in_flight: set[asyncio.Task[None]] = set()
        self._task: asyncio.Task[None] | None = None

    async def start(self) -> None:
        self._task = asyncio.create_task(self._run(), name="email-sender")

    def wake(self) -> None:
        self._wake.set()

    async def stop(self, timeout: float) -> None:
        """Take no more emails; let sends in flight finish and record them."""
        self._stopped.set()
        self._wake.set()
        if self._task is not None:
            await self._task
        if self._in_flight:
            _, late = await asyncio.wait(self._in_flight, timeout=timeout)
            for task in late:
                task.cancel()
            if late:
                # Their leases run out and the abandoned-send rule decides.
                logger.warning("email_sends_abandoned_at_stop", count=len(late))

    async def _run(self) -> None:
        next_sweep = 0.0
        failures = 0
        while not self._stopped.is_set():
            self._wake.clear()
            try:
                if time.monotonic() >= next_sweep:
                    await self._settle_abandoned()
                    await self._measure_queue()
                    next_sweep = time.monotonic() + self._poll_seconds
                slots_full = await self._send_due()
            except (OSError, asyncpg.PostgresError, asyncpg.InterfaceError) as error:
                logger.warning("email_sender_db_error", error=_describe(error))
            except Exception:
                # Whatever failed, the loop must live on: a dead loop would leave
                # every later email unsent while the service still looks ready.
                failures += 1
                logger.exception("email_sender_failed", failures=failures)
                await self._back_off(failures)
                continue
            else:
                failures = 0
                if slots_full:
                    await self._wait_for(self._any_send_done())
                    continue
            await self._wait_for(self._wake.wait())

    async def _send_due(self) -> bool:
        """Start sends for due emails; True when they took every free slot."""
        free = self._concurrency - len(self._in_flight)
        if free <= 0:
            return False
        claimed = await store.claim_due(self._pool, free, self._lease_seconds)
        for email in claimed:
            task = asyncio.create_task(self._deliver(email))
            self._in_flight.add(task)
            task.add_done_callback(self._in_flight.discard)
        return bool(claimed) and len(claimed) == free

    async def _wait_for(self, awaitable: Awaitable[object]) -> None:
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(awaitable, self._poll_seconds)

    async def _any_send_done(self) -> None:
        if not self._in_flight:
            return
        woken = asyncio.ensure_future(self._wake.wait())
        try:
            await asyncio.wait(
                [*self._in_flight, woken], return_when=asyncio.FIRST_COMPLETED
            )
        finally:
            woken.cancel()

    async def _back_off(self, failures: int) -> None:
        """Wait before the next pass after ``failures`` failed ones in a row."""
        delay = min(self._poll_seconds * 2 ** (failures - 1), MAX_BACKOFF_SECONDS)
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._stopped.wait(), delay)

    async def _deliver(self, email: store.ClaimedEmail) -> None:
        log = logger.bind(
            type=email.email_type.value,
            idempotency_key=email.idempotency_key,
            attempt=email.attempts,
            correlation_id=email.correlation_id,
        )
        failure: SendError | None = None
        try:
            message_id = await self._send(email)
        except SendError as error:
            failure = error
        except Exception as error:
            # A bug must not lose the email: count it as a failed attempt.
            log.exception("email_send_crashed")
            failure = SendError(
                FailureReason.API_ERROR, _describe(error), retryable=True
            )
        if failure is not None:
            refused = failure
            await self._record(lambda c: self._failure(c, email, refused), log)
        else:
            await self._record(lambda c: self._success(c, email, message_id), log)

    async def _send(self, email: store.ClaimedEmail) -> str:
        expires_at = store.expired_at(email.data)
        if expires_at is not None and expires_at <= datetime.now(UTC):
            raise SendError(
                FailureReason.TIMEOUT,
                "the code expired before it could be sent",
                retryable=False,
            )
        try:
            validate_email(email.recipient, check_deliverability=False)
        except EmailNotValidError as error:
            detail = mask_recipient(str(error), email.recipient)
            raise SendError(
                FailureReason.INVALID_ADDRESS, detail, retryable=False
            ) from None
        try:
            rendered = render(email.email_type, email.data)
        except TemplateDataError as error:
            raise SendError(
                FailureReason.API_ERROR, str(error), retryable=False
            ) from None

        outgoing = OutgoingEmail(
            idempotency_key=email.idempotency_key,
            email_type=email.email_type,
            sender=self._from,
            recipient=email.recipient,
            subject=rendered.subject,
            text=rendered.text,
            html=rendered.html,
        )
        started = time.perf_counter()
        # A send that outlives its lease could land after another claim.
        budget = asyncio.timeout(self._send_seconds)
        try:
            async with budget:
                return await self._provider.send(outgoing)
        except TimeoutError:
            if not budget.expired():
                raise
            raise self._cut_off() from None
        finally:
            self._metrics.send_duration.labels(provider=self._provider.name).observe(
                time.perf_counter() - started
            )

    def _cut_off(self) -> SendError:
        """A send stopped at its lease: it may or may not have gone out."""
        return SendError(
            FailureReason.TIMEOUT,
            f"the send was cut off after {self._send_seconds:g} s, to end "
            "within its lease",
            retryable=self._provider.deduplicates,
        )

    async def _success(
        self, connection: Connection, email: store.ClaimedEmail, message_id: str
    ) -> Callable[[], None] | None:
        provider = self._provider.name
        if not await store.mark_sent(connection, email, provider, message_id):
            return None
        event = EmailSent(
            type=email.email_type.value,
            idempotency_key=email.idempotency_key,
            provider=provider,
            provider_message_id=message_id,
            attempts=email.attempts,
        )
        await add_to_outbox(connection, [wrap(event, PRODUCER, email.correlation_id)])
        email_type = email.email_type.value

        def after_commit() -> None:
            self._metrics.send_success.labels(type=email_type).inc()
            logger.info(
                "email_sent",
                type=email_type,
                idempotency_key=email.idempotency_key,
                provider=provider,
                attempts=email.attempts,
                correlation_id=email.correlation_id,
            )

        return after_commit

    async def _failure(
        self, connection: Connection, email: store.ClaimedEmail, error: SendError
    ) -> Callable[[], None] | None:
        labels = {"type": email.email_type.value, "reason": error.reason.value}
        detail = mask_recipient(error.detail, email.recipient)
        fields = {
            **labels,
            "idempotency_key": email.idempotency_key,
            "attempts": email.attempts,
            "detail": detail,
            "correlation_id": email.correlation_id,
        }
        if error.retryable and email.attempts < self._retry.max_attempts:
            delay = retry_delay(
                email.attempts, self._retry.base_seconds, self._retry.max_seconds
            )
            if error.retry_after is not None:
                delay = max(delay, min(error.retry_after, self._retry.max_seconds))
            provider = self._provider.name
            if not await store.mark_retry(connection, email, provider, delay, detail):
                return None

            def count_retry() -> None:
                self._metrics.send_retries.labels(**labels).inc()
                logger.warning("email_send_retrying", retry_in=delay, **fields)

            return count_retry
        return await self._give_up(connection, email, error.reason, detail, fields)

    async def _give_up(
        self,
        connection: Connection,
        email: store.ClaimedEmail,
        reason: FailureReason,
        detail: str,
        fields: dict[str, object],
    ) -> Callable[[], None] | None:
        provider = self._provider.name
        if not await store.mark_failed(connection, email, provider, reason, detail):
            return None
        event = EmailFailed(
            type=email.email_type.value,
            idempotency_key=email.idempotency_key,
            provider=provider,
            reason=reason.value,
            attempts=email.attempts,
        )
        await add_to_outbox(connection, [wrap(event, PRODUCER, email.correlation_id)])
        email_type = email.email_type.value

        def count_failure() -> None:
            self._metrics.send_failed.labels(type=email_type, reason=reason.value).inc()
            logger.warning("email_failed", **fields)

        return count_failure

    async def _record(
        self,
        write: Callable[[Connection], Awaitable[Callable[[], None] | None]],
        log: structlog.typing.FilteringBoundLogger,
    ) -> None:
        """Write an outcome in one transaction, retrying a database blip."""
        for delay in (*RECORD_DELAYS, None):
            try:
                async with self._pool.acquire() as connection, connection.transaction():
                    after_commit = await write(connection)
            except (OSError, asyncpg.PostgresError, asyncpg.InterfaceError) as error:
                if delay is None:
                    log.error("email_outcome_not_recorded", error=_describe(error))
                    return
                log.warning("email_outcome_write_failed", error=_describe(error))
                await asyncio.sleep(delay)
                continue
            if after_commit is None:
                log.warning("email_lease_lost")
            else:
                after_commit()
            return

    async def _settle_abandoned(self) -> None:
        """Decide for emails whose sender stopped mid-send and never said."""
        effects: list[Callable[[], None]] = []
        async with self._pool.acquire() as connection, connection.transaction():
            for email in await store.lock_abandoned(connection, ABANDONED_BATCH):
                effect = await self._settle(connection, email)
                if effect is not None:
                    effects.append(effect)
        for effect in effects:
            effect()

    async def _settle(
        self, connection: Connection, email: store.ClaimedEmail
    ) -> Callable[[], None] | None:
        fields: dict[str, object] = {
            "type": email.email_type.value,
            "idempotency_key": email.idempotency_key,
            "attempts": email.attempts,
            "correlation_id": email.correlation_id,
        }
        if self._provider.deduplicates and email.attempts < self._retry.max_attempts:
            # The provider drops a repeated key, so trying again cannot send twice.
            await store.mark_retry(
                connection,
                email,
                self._provider.name,
                0.0,
                "its sender stopped mid-send; tried again under the same key",
            )
            logger.warning("email_send_resumed", **fields)
            return None
        detail = (
            "its sender stopped mid-send; not sent again, since the provider "
            "cannot drop a duplicate (it may have arrived)"
        )
        fields["detail"] = detail
        return await self._give_up(
            connection, email, FailureReason.TIMEOUT, detail, fields
        )

    async def _measure_queue(self) -> None:
        waiting, oldest = await store.queue_state(self._pool)
        self._metrics.queue_depth.set(waiting)
        self._metrics.oldest_waiting_age.set(oldest)


def _describe(error: BaseException) -> str:
    return f"{type(error).__name__}: {error}"

"""The sender loop on the real database, with providers written for the test."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

import asyncpg
import pytest
from prometheus_client import CollectorRegistry
from structlog.testing import capture_logs

from services.email.domain import FailureReason, OutgoingEmail, SendError
from services.email.metrics import EmailMetrics
from services.email.providers import EmailProvider
from services.email.sender import EmailSender, RetryPolicy
from tests.support.emails import email_pool, record_welcome

LEASE_SECONDS = 0.4
POLL_SECONDS = 0.05
FINISHED = ("bitloot_email_send_success", "bitloot_email_send_failed")


class AcceptingProvider:
    """A provider that takes every email at once."""

    name = "smtp"
    deduplicates = False

    def __init__(self) -> None:
        self.sends = 0

    async def send(self, email: OutgoingEmail) -> str:
        self.sends += 1
        return f"<{self.sends}@bitloot.example>"

    async def close(self) -> None:
        pass


class EchoingProvider:
    """A provider that refuses every email, quoting its address in other cases."""

    name = "smtp"
    deduplicates = False

    async def send(self, email: OutgoingEmail) -> str:
        address = email.recipient
        raise SendError(
            FailureReason.API_ERROR,
            f"550 5.7.1 {address.upper()} refused; <{address.lower()}> is blocked",
            retryable=False,
        )

    async def close(self) -> None:
        pass


class StallingProvider:
    """A provider whose first sends never return, as if its own timeout failed;
    later ones are accepted."""

    name = "smtp"

    def __init__(self, *, stalls: int, deduplicates: bool) -> None:
        self.deduplicates = deduplicates
        self.stalls = stalls
        self.sends = 0

    async def send(self, email: OutgoingEmail) -> str:
        self.sends += 1
        if self.sends <= self.stalls:
            await asyncio.Event().wait()
        return f"<{self.sends}@bitloot.example>"

    async def close(self) -> None:
        pass


Row = tuple[str, int, str | None]


async def rows(pool: asyncpg.Pool) -> list[Row]:
    found = await pool.fetch(
        "SELECT status, attempts, failure_reason FROM emails ORDER BY created_at"
    )
    return [(r["status"], r["attempts"], r["failure_reason"]) for r in found]


class Senders:
    """Starts senders on the test's database; stops them after the test."""

    def __init__(self, pool: asyncpg.Pool) -> None:
        self.pool = pool
        self.registry = CollectorRegistry()
        self.metrics = EmailMetrics(self.registry)
        self._running: list[EmailSender] = []

    async def start(
        self,
        provider: EmailProvider,
        *,
        max_attempts: int = 3,
        concurrency: int = 2,
        lease_seconds: float = LEASE_SECONDS,
    ) -> EmailSender:
        sender = EmailSender(
            self.pool,
            provider,
            self.metrics,
            sender_address="BitLoot <no-reply@bitloot.example>",
            retry=RetryPolicy(max_attempts, base_seconds=0.05, max_seconds=0.1),
            concurrency=concurrency,
            lease_seconds=lease_seconds,
            poll_seconds=POLL_SECONDS,
        )
        await sender.start()
        self._running.append(sender)
        return sender

    def counted(self, name: str, **labels: str) -> float:
        return self.registry.get_sample_value(name, labels) or 0.0

    def finished(self) -> float:
        """Emails counted as sent or given up on, whatever their type and reason."""
        return sum(
            sample.value
            for metric in self.registry.collect()
            if metric.name in FINISHED
            for sample in metric.samples
            if sample.name.endswith("_total")
        )

    async def settled(self, count: int, timeout: float = 5.0) -> list[Row]:
        """The rows once ``count`` are final and counted (after their commit)."""
        async with asyncio.timeout(timeout):
            while True:
                found = await rows(self.pool)
                final = [row for row in found if row[0] in ("sent", "failed")]
                if len(final) >= count and self.finished() >= count:
                    return found
                await asyncio.sleep(0.02)

    async def stop(self) -> None:
        for sender in self._running:
            await sender.stop(timeout=1.0)


@pytest.fixture
async def senders(database_url: str) -> AsyncIterator[Senders]:
    pool = await email_pool(database_url)
    senders = Senders(pool)
    try:
        yield senders
    finally:
        await senders.stop()
        await pool.close()


async def outbox_types(pool: asyncpg.Pool) -> list[str]:
    return [
        r["routing_key"] for r in await pool.fetch("SELECT routing_key FROM outbox")
    ]


async def test_a_send_that_outlives_its_lease_is_cut_off_and_failed_as_timeout(
    senders: Senders,
) -> None:
    """Over SMTP a cut-off send is not tried again, and the next email still goes."""
    provider = StallingProvider(stalls=1, deduplicates=False)
    await senders.start(provider, concurrency=1)

    await record_welcome(senders.pool, "first@example.com")
    await record_welcome(senders.pool, "second@example.com")
    settled = await senders.settled(2)

    assert settled == [("failed", 1, "timeout"), ("sent", 1, None)]
    assert provider.sends == 2
    last_error = await senders.pool.fetchval(
        "SELECT last_error FROM emails WHERE status = 'failed'"
    )
    assert "within its lease" in last_error
    assert await outbox_types(senders.pool) == ["email.failed", "email.sent"]
    failures = senders.counted(
        "bitloot_email_send_failed_total", type="welcome", reason="timeout"
    )
    retries = senders.counted(
        "bitloot_email_send_retries_total", type="welcome", reason="timeout"
    )
    assert (failures, retries) == (1, 0)


async def test_a_cut_off_send_is_retried_when_the_provider_drops_duplicates(
    senders: Senders,
) -> None:
    """Resend keeps the key, so a send cut off at its lease is simply tried again."""
    provider = StallingProvider(stalls=1, deduplicates=True)
    await senders.start(provider, concurrency=1)

    await record_welcome(senders.pool)
    settled = await senders.settled(1)

    assert settled == [("sent", 2, None)]
    assert provider.sends == 2
    retries = senders.counted(
        "bitloot_email_send_retries_total", type="welcome", reason="timeout"
    )
    assert retries == 1


def waiting_on_events() -> int:
    """Tasks of this loop that do nothing but wait on an ``asyncio.Event``."""
    return sum(
        1
        for task in asyncio.all_tasks()
        if not task.done() and task.get_coro().__qualname__ == "Event.wait"
    )


async def test_waiting_for_a_free_slot_leaves_no_task_behind(
    senders: Senders,
) -> None:
    """Ten sends one at a time, never woken: no wait outlives the pass that made it."""
    provider = AcceptingProvider()
    for n in range(10):
        await record_welcome(senders.pool, f"user{n}@example.com")
    before = waiting_on_events()

    await senders.start(provider, concurrency=1)
    settled = await senders.settled(10)

    assert [status for status, _, _ in settled] == ["sent"] * 10
    # At most the loop's own wait for its next poll is left.
    assert waiting_on_events() - before <= 1


async def test_an_address_echoed_in_another_case_is_masked_in_the_log_and_the_row(
    senders: Senders,
) -> None:
    """Servers change an address's case when they quote it; it is masked anyway."""
    await senders.start(EchoingProvider())

    with capture_logs() as logs:
        await record_welcome(senders.pool, "Shopper.Name@Example.com")
        settled = await senders.settled(1)

    assert settled == [("failed", 1, "api_error")]
    last_error = await senders.pool.fetchval("SELECT last_error FROM emails")
    [logged] = [line for line in logs if line["event"] == "email_failed"]
    for detail in (last_error, logged["detail"]):
        assert "shopper.name@example.com" not in detail.lower()
        assert detail == "550 5.7.1 <recipient> refused; <recipient> is blocked"

"""The emails table: recording what is owed, claiming it, recording what happened."""

from __future__ import annotations

import json
import uuid
from dataclasses import dataclass
from datetime import datetime
from typing import Any

import asyncpg

from services.email.domain import PRIORITY, EmailType, FailureReason
from shared.db import Connection


@dataclass(frozen=True)
class EmailRequest:
    """An email an event asks for, before it is recorded."""

    email_type: EmailType
    idempotency_key: str
    recipient: str
    data: dict[str, Any]
    event_id: uuid.UUID
    correlation_id: str


@dataclass(frozen=True)
class ClaimedEmail:
    """An email this instance holds for one send attempt.

    Each claim raises ``attempts``, so ``(id, attempts)`` names this claim and
    no other: every outcome write is fenced by it.
    """

    id: uuid.UUID
    email_type: EmailType
    idempotency_key: str
    recipient: str
    data: dict[str, Any]
    attempts: int
    correlation_id: str


async def record_email(connection: Connection, request: EmailRequest) -> bool:
    """Record an owed email; False when its business fact was already recorded."""
    inserted = await connection.fetchval(
        """
        INSERT INTO emails (id, idempotency_key, type, priority, recipient, data,
                            event_id, correlation_id)
        VALUES ($1, $2, $3, $4, $5, $6::jsonb, $7, $8)
        ON CONFLICT (idempotency_key) DO NOTHING
        RETURNING true
        """,
        uuid.uuid4(),
        request.idempotency_key,
        request.email_type.value,
        PRIORITY[request.email_type],
        request.recipient,
        json.dumps(request.data),
        request.event_id,
        request.correlation_id,
    )
    return bool(inserted)


async def claim_due(
    pool: asyncpg.Pool, limit: int, lease_seconds: float
) -> list[ClaimedEmail]:
    """Take up to ``limit`` due emails for one attempt each, OTP codes first.

    The claim commits before any send, so another instance skips these rows,
    and an instance that dies mid-send leaves a lease that runs out.
    """
    rows = await pool.fetch(
        """
        UPDATE emails AS e
        SET status = 'sending', attempts = e.attempts + 1,
            lease_until = clock_timestamp() + $2 * interval '1 second',
            updated_at = clock_timestamp()
        FROM (
            SELECT id FROM emails
            WHERE status = 'pending' AND next_attempt_at <= clock_timestamp()
            ORDER BY priority, next_attempt_at
            LIMIT $1
            FOR UPDATE SKIP LOCKED
        ) AS due
        WHERE e.id = due.id
        RETURNING e.id, e.type, e.idempotency_key, e.recipient, e.data, e.attempts,
                  e.correlation_id
        """,
        limit,
        lease_seconds,
    )
    return [
        ClaimedEmail(
            id=row["id"],
            email_type=EmailType(row["type"]),
            idempotency_key=row["idempotency_key"],
            recipient=row["recipient"],
            data=json.loads(row["data"]),
            attempts=row["attempts"],
            correlation_id=row["correlation_id"],
        )
        for row in rows
    ]


async def mark_sent(
    connection: Connection,
    email: ClaimedEmail,
    provider: str,
    provider_message_id: str,
) -> bool:
    """Record a send the provider took; False if this claim is no longer current."""
    updated = await connection.fetchval(
        """
        UPDATE emails
        SET status = 'sent', provider = $2, provider_message_id = $3,
            lease_until = NULL, last_error = NULL, finished_at = clock_timestamp(),
            updated_at = clock_timestamp(),
            data = CASE WHEN type = 'otp' THEN NULL ELSE data END
        WHERE id = $1 AND attempts = $4 AND status = 'sending'
        RETURNING true
        """,
        email.id,
        provider,
        provider_message_id[:500],
        email.attempts,
    )
    return bool(updated)


async def mark_retry(
    connection: Connection,
    email: ClaimedEmail,
    provider: str,
    delay_seconds: float,
    error: str,
) -> bool:
    """Put an email back in line after a delay; False if the claim is not current."""
    updated = await connection.fetchval(
        """
        UPDATE emails
        SET status = 'pending', provider = $2, lease_until = NULL,
            next_attempt_at = clock_timestamp() + $3 * interval '1 second',
            last_error = $4, updated_at = clock_timestamp()
        WHERE id = $1 AND attempts = $5 AND status = 'sending'
        RETURNING true
        """,
        email.id,
        provider,
        delay_seconds,
        error[:500],
        email.attempts,
    )
    return bool(updated)


async def mark_failed(
    connection: Connection,
    email: ClaimedEmail,
    provider: str,
    reason: FailureReason,
    error: str,
) -> bool:
    """Give up on an email, erasing its OTP code; False if the claim is not current."""
    updated = await connection.fetchval(
        """
        UPDATE emails
        SET status = 'failed', provider = $2, failure_reason = $3, last_error = $4,
            lease_until = NULL, finished_at = clock_timestamp(),
            updated_at = clock_timestamp(),
            data = CASE WHEN type = 'otp' THEN NULL ELSE data END
        WHERE id = $1 AND attempts = $5 AND status = 'sending'
        RETURNING true
        """,
        email.id,
        provider,
        reason.value,
        error[:500],
        email.attempts,
    )
    return bool(updated)


async def lock_abandoned(connection: Connection, limit: int) -> list[ClaimedEmail]:
    """Emails whose sender's lease ran out mid-send, locked for a decision."""
    rows = await connection.fetch(
        """
        SELECT id, type, idempotency_key, recipient, data, attempts, correlation_id
        FROM emails
        WHERE status = 'sending' AND lease_until < clock_timestamp()
        ORDER BY lease_until
        LIMIT $1
        FOR UPDATE SKIP LOCKED
        """,
        limit,
    )
    return [
        ClaimedEmail(
            id=row["id"],
            email_type=EmailType(row["type"]),
            idempotency_key=row["idempotency_key"],
            recipient=row["recipient"],
            data=json.loads(row["data"]) if row["data"] is not None else {},
            attempts=row["attempts"],
            correlation_id=row["correlation_id"],
        )
        for row in rows
    ]


async def queue_state(pool: asyncpg.Pool) -> tuple[int, float]:
    """How many emails wait (pending or sending), and the oldest one's age."""
    row = await pool.fetchrow(
        """
        SELECT count(*) AS waiting,
               coalesce(extract(epoch FROM clock_timestamp() - min(created_at)), 0)
                   AS oldest
        FROM emails WHERE status IN ('pending', 'sending')
        """
    )
    assert row is not None
    return int(row["waiting"]), float(row["oldest"])


def expired_at(data: dict[str, Any]) -> datetime | None:
    """When the content stops being useful (an OTP code's expiry), if ever."""
    value = data.get("expires_at_iso")
    return datetime.fromisoformat(value) if isinstance(value, str) else None

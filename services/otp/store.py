"""The otp tables: live codes, what the limits count, and users."""

from __future__ import annotations

import uuid
from dataclasses import dataclass
from datetime import datetime

import asyncpg

from services.otp.domain import IssuedCode
from shared.db import Connection

# Each kind of key has its own namespace of two-key advisory locks, so an
# address and a client never share a lock, whatever their hashes.
ADDRESS_LOCKS = "bitloot.otp.address"
CLIENT_LOCKS = "bitloot.otp.client"


def lock_key(digest: bytes) -> int:
    """A hash's first four bytes as a lock key; a rare clash only makes two wait."""
    return int.from_bytes(digest[:4], "big", signed=True)


async def lock_requests(
    connection: Connection, email_hash: bytes, client_hash: bytes
) -> None:
    """Make every other request or verify for this address, or client, wait.

    The locks last until the transaction ends, so counting the window and
    recording the request are one step for each address. Every transaction
    takes the address lock before the client lock, so none waits in a circle.
    """
    await lock_address(connection, email_hash)
    await _lock(connection, CLIENT_LOCKS, client_hash)


async def lock_address(connection: Connection, email_hash: bytes) -> None:
    """Make every other request or verify for this address wait.

    A verify holds it while it counts the address's failures, judges the code
    and records a failure, so concurrent guesses, on any instance, are judged
    one by one against the budget, whether or not a code row exists to lock.
    """
    await _lock(connection, ADDRESS_LOCKS, email_hash)


async def _lock(connection: Connection, namespace: str, digest: bytes) -> None:
    await connection.execute(
        "SELECT pg_advisory_xact_lock(hashtext($1), $2)", namespace, lock_key(digest)
    )


async def requests_since(
    connection: Connection, email_hash: bytes, client_hash: bytes, since: datetime
) -> tuple[list[datetime], list[datetime]]:
    """When this address, and when this client, asked for codes after ``since``."""
    rows = await connection.fetch(
        """
        SELECT requested_at, email_hash = $1 AS for_address,
               client_hash = $2 AS from_client
        FROM code_requests
        WHERE (email_hash = $1 OR client_hash = $2) AND requested_at > $3
        """,
        email_hash,
        client_hash,
        since,
    )
    for_address = [row["requested_at"] for row in rows if row["for_address"]]
    from_client = [row["requested_at"] for row in rows if row["from_client"]]
    return for_address, from_client


async def record_request(
    connection: Connection, email_hash: bytes, client_hash: bytes, at: datetime
) -> None:
    await connection.execute(
        """
        INSERT INTO code_requests (email_hash, client_hash, requested_at)
        VALUES ($1, $2, $3)
        """,
        email_hash,
        client_hash,
        at,
    )


async def replace_code(
    connection: Connection,
    email_hash: bytes,
    request_id: uuid.UUID,
    code_hash: bytes,
    issued_at: datetime,
    expires_at: datetime,
) -> None:
    """Store the address's new code; the earlier one, and its wrong tries, go."""
    await connection.execute(
        """
        INSERT INTO codes (email_hash, request_id, code_hash, issued_at, expires_at)
        VALUES ($1, $2, $3, $4, $5)
        ON CONFLICT (email_hash) DO UPDATE
        SET request_id = excluded.request_id, code_hash = excluded.code_hash,
            issued_at = excluded.issued_at, expires_at = excluded.expires_at,
            wrong_tries = 0
        """,
        email_hash,
        request_id,
        code_hash,
        issued_at,
        expires_at,
    )


async def lock_code(connection: Connection, email_hash: bytes) -> IssuedCode | None:
    """The address's live code, locked: tries at one code are judged one by one."""
    row = await connection.fetchrow(
        """
        SELECT request_id, code_hash, expires_at, wrong_tries
        FROM codes WHERE email_hash = $1
        FOR UPDATE
        """,
        email_hash,
    )
    if row is None:
        return None
    return IssuedCode(
        request_id=row["request_id"],
        code_hash=row["code_hash"],
        expires_at=row["expires_at"],
        wrong_tries=row["wrong_tries"],
    )


async def record_wrong_try(connection: Connection, email_hash: bytes) -> None:
    await connection.execute(
        "UPDATE codes SET wrong_tries = wrong_tries + 1 WHERE email_hash = $1",
        email_hash,
    )


async def failures_since(
    connection: Connection, email_hash: bytes, since: datetime
) -> list[datetime]:
    """When this address's codes were tried wrongly after ``since``, whatever code."""
    rows = await connection.fetch(
        """
        SELECT failed_at FROM failed_verifications
        WHERE email_hash = $1 AND failed_at > $2
        """,
        email_hash,
        since,
    )
    return [row["failed_at"] for row in rows]


async def record_failure(
    connection: Connection, email_hash: bytes, at: datetime
) -> None:
    await connection.execute(
        "INSERT INTO failed_verifications (email_hash, failed_at) VALUES ($1, $2)",
        email_hash,
        at,
    )


async def use_code(connection: Connection, email_hash: bytes) -> None:
    """Delete a code that logged in: it works once."""
    await connection.execute("DELETE FROM codes WHERE email_hash = $1", email_hash)


async def record_login(
    connection: Connection, email: str, at: datetime
) -> tuple[uuid.UUID, bool]:
    """The user logging in, and whether this login registered them.

    Concurrent first logins of one address insert one row: the others wait for
    it on the unique address and then find it.
    """
    registered = await connection.fetchval(
        """
        INSERT INTO users (id, email, registered_at, last_login_at)
        VALUES ($1, $2, $3, $3)
        ON CONFLICT (email) DO NOTHING
        RETURNING id
        """,
        uuid.uuid4(),
        email,
        at,
    )
    if registered is not None:
        return registered, True
    existing = await connection.fetchval(
        "UPDATE users SET last_login_at = $2 WHERE email = $1 RETURNING id", email, at
    )
    assert existing is not None, "the conflicting user row is committed"
    return existing, False


@dataclass(frozen=True)
class Swept:
    """How many rows a sweep deleted, by table."""

    requests: int
    failures: int
    codes: int


async def sweep(
    pool: asyncpg.Pool,
    requests_before: datetime,
    failures_before: datetime,
    codes_before: datetime,
) -> Swept:
    """Delete requests and failures no window counts any more, and old codes."""
    async with pool.acquire() as connection:
        requests = await connection.fetchval(
            """
            WITH gone AS (
                DELETE FROM code_requests WHERE requested_at <= $1 RETURNING 1
            )
            SELECT count(*) FROM gone
            """,
            requests_before,
        )
        failures = await connection.fetchval(
            """
            WITH gone AS (
                DELETE FROM failed_verifications WHERE failed_at <= $1 RETURNING 1
            )
            SELECT count(*) FROM gone
            """,
            failures_before,
        )
        codes = await connection.fetchval(
            """
            WITH gone AS (DELETE FROM codes WHERE expires_at <= $1 RETURNING 1)
            SELECT count(*) FROM gone
            """,
            codes_before,
        )
    return Swept(int(requests), int(failures), int(codes))

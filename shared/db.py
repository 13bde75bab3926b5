"""PostgreSQL access: a pool pinned to the service's schema, and ordered migrations."""

from __future__ import annotations

import hashlib
import re
from dataclasses import dataclass
from pathlib import Path

import asyncpg
import structlog
from asyncpg.pool import PoolConnectionProxy

logger = structlog.get_logger(__name__)

# What a pool hands out and what asyncpg.connect returns; queries take either.
Connection = asyncpg.Connection | PoolConnectionProxy

SHARED_MIGRATIONS = Path(__file__).parent / "migrations"
# Failures that asking again later may cure: the server away or restarting,
# out of connections or resources, a statement cancelled, a transaction
# rolled back by a deadlock or a serialization conflict. Anything else, a
# constraint or a bad query, is a bug and must not look like an outage.
TRANSIENT_DATABASE_ERRORS: tuple[type[BaseException], ...] = (
    OSError,
    TimeoutError,
    asyncpg.InterfaceError,
    asyncpg.PostgresConnectionError,
    asyncpg.InsufficientResourcesError,
    asyncpg.OperatorInterventionError,
    asyncpg.TransactionRollbackError,
)
_SCHEMA_NAME = re.compile(r"^[a-z_][a-z0-9_]{0,62}$")
_MIGRATION_FILE = re.compile(r"^(\d{4})_[a-z0-9_]+\.sql$")


class MigrationError(Exception):
    """The migrations on disk disagree with what the database has applied."""


@dataclass(frozen=True)
class Migration:
    source: str
    name: str
    sql: str

    @property
    def key(self) -> str:
        return f"{self.source}/{self.name}"

    @property
    def checksum(self) -> str:
        return hashlib.sha256(self.sql.encode()).hexdigest()


def check_schema_name(schema: str) -> str:
    """Refuse a schema name that would need quoting; it is spliced into SQL."""
    if not _SCHEMA_NAME.match(schema):
        raise ValueError(f"schema name {schema!r} is not a plain identifier")
    return schema


def discover_migrations(service_dir: Path) -> list[Migration]:
    """The shared migrations first, then the service's, each in file order."""
    migrations = []
    for source, directory in (("shared", SHARED_MIGRATIONS), ("service", service_dir)):
        for path in sorted(directory.glob("*.sql")):
            if not _MIGRATION_FILE.match(path.name):
                message = f"migration {path} is not named NNNN_description.sql"
                raise MigrationError(message)
            migrations.append(Migration(source, path.name, path.read_text()))
    return migrations


async def migrate(dsn: str, schema: str, migrations: list[Migration]) -> list[str]:
    """Apply pending migrations in one transaction; return the keys applied.

    An advisory lock on the schema makes concurrent starts wait for each other,
    so two instances starting at once apply each migration exactly once.
    """
    check_schema_name(schema)
    connection = await asyncpg.connect(dsn)
    try:
        async with connection.transaction():
            await connection.execute(
                "SELECT pg_advisory_xact_lock(hashtext('bitloot.migrate.' || $1))",
                schema,
            )
            await connection.execute(f"CREATE SCHEMA IF NOT EXISTS {schema}")
            await connection.execute(f"SET LOCAL search_path TO {schema}")
            await connection.execute(
                """
                CREATE TABLE IF NOT EXISTS schema_migrations (
                    key text PRIMARY KEY,
                    checksum text NOT NULL,
                    applied_at timestamptz NOT NULL DEFAULT now()
                )
                """
            )
            rows = await connection.fetch("SELECT key, checksum FROM schema_migrations")
            applied = {row["key"]: row["checksum"] for row in rows}
            done = []
            for migration in migrations:
                recorded = applied.get(migration.key)
                if recorded is not None:
                    if recorded != migration.checksum:
                        message = (
                            f"migration {migration.key} changed after it was applied "
                            f"to schema {schema}; add a new migration instead"
                        )
                        raise MigrationError(message)
                    continue
                await connection.execute(migration.sql)
                await connection.execute(
                    "INSERT INTO schema_migrations (key, checksum) VALUES ($1, $2)",
                    migration.key,
                    migration.checksum,
                )
                done.append(migration.key)
    finally:
        await connection.close()

    for key in done:
        logger.info("migration_applied", schema=schema, migration=key)
    return done


async def create_pool(
    dsn: str, schema: str, min_size: int = 2, max_size: int = 10
) -> asyncpg.Pool:
    """A pool whose connections resolve unqualified names in the service schema."""
    check_schema_name(schema)
    pool = await asyncpg.create_pool(
        dsn,
        min_size=min_size,
        max_size=max_size,
        server_settings={"search_path": schema, "application_name": schema},
    )
    assert pool is not None
    return pool

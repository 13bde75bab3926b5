"""Migrations apply once, in order, even when instances start together."""

from __future__ import annotations

import asyncio
from pathlib import Path

import asyncpg
import pytest

from shared.db import MigrationError, discover_migrations, migrate


def write(directory: Path, name: str, sql: str) -> None:
    directory.mkdir(parents=True, exist_ok=True)
    (directory / name).write_text(sql)


async def test_two_instances_starting_at_once_apply_each_migration_once(
    database_url: str, tmp_path: Path
) -> None:
    """Concurrent runs wait on the schema's lock instead of racing."""
    write(tmp_path, "0001_things.sql", "CREATE TABLE things (id int PRIMARY KEY);")
    write(tmp_path, "0002_seed.sql", "INSERT INTO things VALUES (1);")
    migrations = discover_migrations(tmp_path)

    results = await asyncio.gather(
        *(migrate(database_url, "racing", migrations) for _ in range(4))
    )

    applied = [keys for keys in results if keys]
    assert len(applied) == 1
    assert applied[0][-2:] == ["service/0001_things.sql", "service/0002_seed.sql"]
    connection = await asyncpg.connect(database_url)
    try:
        assert await connection.fetchval("SELECT count(*) FROM racing.things") == 1
    finally:
        await connection.close()


async def test_a_migration_edited_after_it_was_applied_is_refused(
    database_url: str, tmp_path: Path
) -> None:
    """Changing history would leave databases that differ silently."""
    write(tmp_path, "0001_things.sql", "CREATE TABLE things (id int);")
    await migrate(database_url, "edited", discover_migrations(tmp_path))
    write(tmp_path, "0001_things.sql", "CREATE TABLE things (id bigint);")

    with pytest.raises(MigrationError, match="changed after it was applied"):
        await migrate(database_url, "edited", discover_migrations(tmp_path))


async def test_a_failing_migration_leaves_nothing_half_applied(
    database_url: str, tmp_path: Path
) -> None:
    """All pending migrations commit together or not at all."""
    write(tmp_path, "0001_things.sql", "CREATE TABLE things (id int);")
    write(tmp_path, "0002_broken.sql", "CREATE TABLE oops (;")

    with pytest.raises(asyncpg.PostgresSyntaxError):
        await migrate(database_url, "broken", discover_migrations(tmp_path))

    connection = await asyncpg.connect(database_url)
    try:
        exists = await connection.fetchval("SELECT to_regclass('broken.things')")
    finally:
        await connection.close()
    assert exists is None


def test_a_migration_file_with_a_bad_name_is_refused(tmp_path: Path) -> None:
    """Order comes from the four-digit prefix, so every file needs one."""
    write(tmp_path, "things.sql", "SELECT 1;")
    with pytest.raises(MigrationError, match="NNNN_description"):
        discover_migrations(tmp_path)

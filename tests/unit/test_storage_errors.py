"""Which database failures tell a client to come back, and which are bugs."""

from __future__ import annotations

import asyncpg
import pytest

from shared.http import ApiError, storage_unavailable


@pytest.mark.parametrize(
    "error",
    [
        ConnectionRefusedError("connection refused"),
        TimeoutError(),
        asyncpg.ConnectionDoesNotExistError("connection was closed"),
        asyncpg.CannotConnectNowError("the database system is starting up"),
        asyncpg.TooManyConnectionsError("too many clients"),
        asyncpg.DeadlockDetectedError("deadlock detected"),
        asyncpg.SerializationError("could not serialize access"),
    ],
)
async def test_a_transient_database_failure_is_a_503_to_retry(
    error: BaseException,
) -> None:
    """The client is told to retry in a few seconds; nothing more leaks."""
    with pytest.raises(ApiError) as raised:
        async with storage_unavailable("orders cannot be stored right now"):
            raise error

    assert raised.value.status == 503
    assert raised.value.code == "storage_unavailable"
    assert raised.value.headers == {"Retry-After": "5"}


@pytest.mark.parametrize(
    "error",
    [
        asyncpg.UniqueViolationError("duplicate key value"),
        asyncpg.UndefinedColumnError("column does not exist"),
        asyncpg.DataError("invalid input syntax"),
    ],
)
async def test_a_database_error_that_no_retry_cures_is_not_called_unavailable(
    error: BaseException,
) -> None:
    """A constraint or a bad query is a bug: it goes on to the 500 path."""
    with pytest.raises(type(error)):
        async with storage_unavailable("orders cannot be stored right now"):
            raise error

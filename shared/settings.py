"""Settings read from ``BITLOOT_*`` environment variables, checked at start-up."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any, TypeVar

from pydantic import Field, ValidationError
from pydantic_settings import BaseSettings, SettingsConfigDict

ENV_PREFIX = "BITLOOT_"
# Values of these settings may hold credentials, so errors never echo them.
_SENSITIVE_WORDS = ("secret", "key", "password", "token", "url")


class SettingsError(Exception):
    """A setting has a value the service cannot start with."""


# An empty variable, as `.env.example` leaves optional ones, means unset: an
# exported BITLOOT_SMTP_USERNAME= must not turn into a login as "".
ENV_CONFIG = SettingsConfigDict(
    env_prefix=ENV_PREFIX, extra="ignore", env_ignore_empty=True
)


class CommonSettings(BaseSettings):
    """What every service reads; each service extends it with its own fields."""

    model_config = SettingsConfigDict(**ENV_CONFIG, validate_default=True)

    database_url: str = "postgresql://postgres@127.0.0.1:5432/bitloot"
    amqp_url: str = "amqp://guest:guest@127.0.0.1:5672/"
    http_host: str = "0.0.0.0"
    http_port: int = Field(default=0, ge=0, le=65535)
    advertise_host: str = "127.0.0.1"
    sd_dir: Path = Path(".run/targets")
    environment: str = "dev"
    log_level: str = Field(
        default="info", pattern="^(debug|info|warning|error|critical)$"
    )
    log_format: str = Field(default="auto", pattern="^(auto|json|console)$")
    jwt_public_key_file: Path | None = None
    jwt_private_key_file: Path | None = None
    jwt_issuer: str = "bitloot"
    jwt_audience: str = "bitloot"
    migrate_on_start: bool = True
    db_pool_min: int = Field(default=2, ge=1)
    db_pool_max: int = Field(default=10, ge=1)
    max_body_bytes: int = Field(default=1024 * 1024, ge=1024)
    shutdown_timeout_seconds: float = Field(default=15.0, gt=0)
    outbox_poll_seconds: float = Field(default=1.0, gt=0)
    outbox_batch_size: int = Field(default=200, ge=1, le=5000)
    publish_timeout_seconds: float = Field(default=5.0, gt=0)
    amqp_reconnect_seconds: float = Field(default=2.0, gt=0)
    consumer_retry_seconds: tuple[float, ...] = Field(
        default=(1.0, 5.0, 30.0), min_length=1, max_length=10
    )


SettingsT = TypeVar("SettingsT", bound=CommonSettings)


def describe_validation_error(error: ValidationError) -> str:
    """Turn pydantic's report into one line per bad variable, naming each one."""
    lines = []
    for problem in error.errors():
        field = ".".join(str(part) for part in problem["loc"])
        if not field:
            # A check across settings names its variables in its own message.
            lines.append(problem["msg"].removeprefix("Value error, "))
            continue
        variable = f"{ENV_PREFIX}{field.upper()}"
        given: Any = problem.get("input")
        hidden = isinstance(given, dict) or any(
            word in field for word in _SENSITIVE_WORDS
        )
        shown = "" if hidden else f" (got {given!r})"
        lines.append(f"{variable}: {problem['msg']}{shown}")
    return "\n".join(lines)


def load_settings(settings_class: type[SettingsT], **overrides: Any) -> SettingsT:
    """Read the settings, raising SettingsError that names every bad variable."""
    try:
        return settings_class(**overrides)
    except ValidationError as error:
        message = describe_validation_error(error)
        raise SettingsError(message) from None


def load_settings_or_exit(settings_class: type[SettingsT]) -> SettingsT:
    """Read the settings for a process start, stopping it with a clear message."""
    try:
        return load_settings(settings_class)
    except SettingsError as error:
        print(f"configuration error:\n{error}", file=sys.stderr)
        raise SystemExit(2) from None

"""The email service's settings: the shared ones, the provider's, the retry policy."""

from __future__ import annotations

from email.policy import default as email_policy
from email.utils import parseaddr

from email_validator import EmailNotValidError, validate_email
from pydantic import Field, SecretStr, field_validator, model_validator

from services.email.domain import SEND_SHARE_OF_LEASE, send_budget
from shared.settings import CommonSettings


class EmailSettings(CommonSettings):
    http_port: int = Field(default=4002, ge=0, le=65535)
    email_provider: str = Field(default="smtp", pattern="^(smtp|resend)$")
    email_from: str = "BitLoot <no-reply@bitloot.example>"

    smtp_host: str = "127.0.0.1"
    smtp_port: int = Field(default=1025, ge=1, le=65535)
    smtp_username: str | None = None
    smtp_password: SecretStr | None = None
    smtp_security: str = Field(default="none", pattern="^(none|starttls|tls)$")
    smtp_timeout_seconds: float = Field(default=10.0, gt=0)

    resend_api_key: SecretStr | None = None
    resend_api_url: str = "https://api.resend.com"
    resend_timeout_seconds: float = Field(default=10.0, gt=0)

    email_max_attempts: int = Field(default=5, ge=1, le=20)
    email_retry_base_seconds: float = Field(default=2.0, gt=0)
    email_retry_max_seconds: float = Field(default=300.0, gt=0)
    email_send_concurrency: int = Field(default=4, ge=1, le=64)
    email_lease_seconds: float = Field(default=120.0, gt=0)
    email_poll_seconds: float = Field(default=1.0, gt=0)

    @field_validator("email_from")
    @classmethod
    def _check_from(cls, value: str) -> str:
        problem = _sender_problem(value)
        if problem is not None:
            raise ValueError(f"{value!r} is not a sender address: {problem}")
        return value

    @model_validator(mode="after")
    def _check_provider(self) -> EmailSettings:
        key = self.resend_api_key
        if self.email_provider == "resend" and (
            key is None or not key.get_secret_value()
        ):
            raise ValueError(
                "BITLOOT_RESEND_API_KEY must be set when BITLOOT_EMAIL_PROVIDER "
                "is resend"
            )
        timeout = (
            self.resend_timeout_seconds
            if self.email_provider == "resend"
            else self.smtp_timeout_seconds
        )
        if send_budget(self.email_lease_seconds) <= timeout:
            raise ValueError(
                "BITLOOT_EMAIL_LEASE_SECONDS must be more than "
                f"{timeout / SEND_SHARE_OF_LEASE:g} s: a send may use "
                f"{SEND_SHARE_OF_LEASE:.0%} of the lease, which must be longer "
                f"than the provider's timeout ({timeout:g} s), or a slow send "
                "would be cut off before the provider gives up on it"
            )
        return self


def _sender_problem(value: str) -> str | None:
    """Why ``value`` cannot be the From of an email; None when it can."""
    try:
        validate_email(parseaddr(value)[1], check_deliverability=False)
    except EmailNotValidError as error:
        return str(error)
    # parseaddr forgives a missing ">", trailing text or a second address; the
    # header parser reports each one as a defect.
    try:
        header = email_policy.header_factory("From", value)
    except (ValueError, IndexError):
        # A line break, or a value odd enough to trip the parser itself.
        return "it cannot be written as a From header"
    if len(header.addresses) != 1 or header.defects:
        return "it must be one address, alone or as 'Name <address>'"
    return None

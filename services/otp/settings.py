"""The otp service's settings: the shared ones, its hash secret, admins and limits."""

from __future__ import annotations

from typing import Annotated, Any

from email_validator import EmailNotValidError, validate_email
from pydantic import Field, SecretStr, field_validator, model_validator
from pydantic_settings import NoDecode

from services.otp.domain import normalise_email
from shared.settings import CommonSettings

MIN_SECRET_CHARS = 16


class OtpSettings(CommonSettings):
    http_port: int = Field(default=4001, ge=0, le=65535)
    otp_hash_secret: SecretStr | None = None
    # A comma-separated list in the environment, not JSON: it is typed by people.
    admin_emails: Annotated[frozenset[str], NoDecode] = frozenset()
    otp_client_requests_per_minute: int = Field(default=30, ge=1, le=10_000)
    otp_failed_verifications_per_hour: int = Field(default=10, ge=1, le=1000)
    otp_token_ttl_seconds: int = Field(default=3600, ge=60, le=30 * 24 * 3600)

    @field_validator("admin_emails", mode="before")
    @classmethod
    def _read_admin_list(cls, value: Any) -> Any:
        if isinstance(value, str):
            return [part for part in value.split(",") if part.strip()]
        return value

    @field_validator("admin_emails", mode="after")
    @classmethod
    def _normalise_admins(cls, value: frozenset[str]) -> frozenset[str]:
        admins = set()
        for address in value:
            try:
                valid = validate_email(address.strip(), check_deliverability=False)
            except EmailNotValidError as error:
                message = f"{address.strip()!r} is not an address: {error}"
                raise ValueError(message) from None
            admins.add(normalise_email(valid.normalized))
        return frozenset(admins)

    @model_validator(mode="after")
    def _check_signing(self) -> OtpSettings:
        secret = self.otp_hash_secret
        if secret is None or len(secret.get_secret_value()) < MIN_SECRET_CHARS:
            raise ValueError(
                "BITLOOT_OTP_HASH_SECRET must be set to a random secret of at least "
                f"{MIN_SECRET_CHARS} characters; it keys the hashes of codes and "
                "addresses (make run writes one to .run/secrets/otp-hash-secret)"
            )
        if self.jwt_private_key_file is None:
            raise ValueError(
                "BITLOOT_JWT_PRIVATE_KEY_FILE must be set: the otp service signs "
                "the tokens it issues (make run writes one to .run/keys/)"
            )
        return self

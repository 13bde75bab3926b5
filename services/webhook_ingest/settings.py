"""webhook-ingest's settings: the shared ones plus the providers' secrets."""

from __future__ import annotations

from pydantic import Field, SecretStr

from shared.settings import CommonSettings

WEBHOOK_BODY_LIMIT = 64 * 1024


class WebhookIngestSettings(CommonSettings):
    http_port: int = Field(default=4004, ge=0, le=65535)
    nowpayments_ipn_secret: SecretStr | None = None
    kinguin_webhook_secret: SecretStr | None = None
    webhook_max_body_bytes: int = Field(default=WEBHOOK_BODY_LIMIT, ge=1024)

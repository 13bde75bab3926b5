"""The payment service's settings: the shared ones plus its provider's."""

from __future__ import annotations

from decimal import Decimal

from pydantic import Field, SecretStr, model_validator

from shared.settings import CommonSettings


class PaymentSettings(CommonSettings):
    http_port: int = Field(default=4003, ge=0, le=65535)
    payment_provider: str = Field(
        default="simulator", pattern="^(simulator|nowpayments)$"
    )
    nowpayments_api_key: SecretStr | None = None
    nowpayments_api_url: str = "https://api.nowpayments.io"
    nowpayments_timeout_seconds: float = Field(default=10.0, gt=0)
    nowpayments_retries: int = Field(default=2, ge=0, le=10)
    ipn_callback_url: str = "http://127.0.0.1:4004/webhooks/nowpayments/ipn"
    payment_tolerance_ratio: Decimal = Field(default=Decimal("0.001"), ge=0, lt=1)
    order_max_items: int = Field(default=20, ge=1, le=200)

    @model_validator(mode="after")
    def _nowpayments_needs_a_key(self) -> PaymentSettings:
        key = self.nowpayments_api_key
        if self.payment_provider == "nowpayments" and (
            key is None or not key.get_secret_value()
        ):
            raise ValueError(
                "BITLOOT_NOWPAYMENTS_API_KEY must be set when "
                "BITLOOT_PAYMENT_PROVIDER is nowpayments"
            )
        return self

"""Where payments are opened: the provider interface, its errors, the simulator."""

from __future__ import annotations

import secrets
import uuid
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from typing import Protocol

from services.payment.domain import quantize_pay_amount

SIMULATOR = "simulator"
NOWPAYMENTS = "nowpayments"


@dataclass(frozen=True)
class PaymentRequest:
    """What BitLoot asks a provider for: this price, paid in that asset."""

    order_id: uuid.UUID
    price_amount: Decimal
    price_currency: str
    pay_currency: str
    description: str


@dataclass(frozen=True)
class OpenedPayment:
    """The provider's answer: where to pay and exactly how much."""

    provider: str
    payment_id: str
    pay_address: str
    pay_amount: Decimal
    pay_currency: str
    expires_at: datetime | None


class ProviderError(Exception):
    """The provider did not open the payment; no order is kept."""


class ProviderRefusedError(ProviderError):
    """The provider answered and said no; asking again will not help."""

    def __init__(self, status: int, code: str, message: str) -> None:
        super().__init__(
            f"the provider refused the payment ({status} {code}): {message}"
        )
        self.status = status
        self.code = code
        self.message = message

    @property
    def refused_credentials(self) -> bool:
        return self.status in (401, 403)


class ProviderUnavailableError(ProviderError):
    """The provider failed or answered nonsense, also after retries."""


class ProviderTimeoutError(ProviderError):
    """The provider did not answer in time, also after retries."""


class PaymentProvider(Protocol):
    name: str

    async def open_payment(self, request: PaymentRequest) -> OpenedPayment: ...

    async def close(self) -> None: ...


# The simulator's exchange rates, in US dollars per unit: demo figures only.
DEMO_USD_RATES: dict[str, Decimal] = {
    "btc": Decimal("95000"),
    "eth": Decimal("3500"),
    "ltc": Decimal("90"),
    "doge": Decimal("0.20"),
    "usdttrc20": Decimal("1"),
}
_BECH32 = "qpzry9x8gf2tvdw0s3jn54khce6mua7l"
_ADDRESS_PREFIX = {"btc": "bc1q", "ltc": "ltc1q"}


class SimulatedProvider:
    """Opens payments locally at demo rates; `bitloot simulate` plays their IPNs."""

    name = SIMULATOR

    def __init__(self, lifetime: timedelta = timedelta(hours=1)) -> None:
        self._lifetime = lifetime

    async def open_payment(self, request: PaymentRequest) -> OpenedPayment:
        if request.price_currency.lower() != "usd":
            raise ProviderRefusedError(
                400,
                "UNSUPPORTED_PRICE_CURRENCY",
                f"the simulator prices in usd, not {request.price_currency}",
            )
        asset = request.pay_currency
        pay_amount = quantize_pay_amount(
            request.price_amount / DEMO_USD_RATES[asset], asset
        )
        return OpenedPayment(
            provider=self.name,
            payment_id=str(secrets.randbelow(9 * 10**9) + 10**9),
            pay_address=_demo_address(asset),
            pay_amount=pay_amount,
            pay_currency=asset,
            expires_at=datetime.now(UTC) + self._lifetime,
        )

    async def close(self) -> None:
        return None


def _demo_address(asset: str) -> str:
    prefix = _ADDRESS_PREFIX.get(asset)
    if prefix is not None:
        return prefix + "".join(secrets.choice(_BECH32) for _ in range(38))
    if asset == "usdttrc20":
        return "T" + secrets.token_hex(16)[:33]
    return "0x" + secrets.token_hex(20)

"""Orders and payments: statuses, the moves between them, and amounts; no I/O."""

from __future__ import annotations

import math
from dataclasses import dataclass
from decimal import ROUND_UP, Decimal, InvalidOperation
from enum import StrEnum
from typing import Any

# The assets a shopper can pay in, with the decimals their amounts keep.
ASSET_PRECISION: dict[str, int] = {
    "btc": 8,
    "eth": 8,
    "ltc": 8,
    "doge": 8,
    "usdttrc20": 6,
}
OTHER_ASSET = "other"
ASSET_LABELS = (*ASSET_PRECISION, OTHER_ASSET)


class PaymentStatus(StrEnum):
    """NOWPayments' payment statuses."""

    WAITING = "waiting"
    CONFIRMING = "confirming"
    CONFIRMED = "confirmed"
    SENDING = "sending"
    PARTIALLY_PAID = "partially_paid"
    FINISHED = "finished"
    FAILED = "failed"
    REFUNDED = "refunded"
    EXPIRED = "expired"


class OrderStatus(StrEnum):
    AWAITING_PAYMENT = "awaiting_payment"
    CONFIRMING = "confirming"
    UNDERPAID = "underpaid"
    PAID = "paid"
    FAILED = "failed"
    EXPIRED = "expired"
    REFUNDED = "refunded"


S = PaymentStatus
# Where a payment may go from each status. Anything else is an IPN that
# arrived late or twice, and is ignored: a status never moves backwards.
# Expiry only ends a payment nothing arrived for, and once money arrived
# (partially_paid) the payment can still finish or be refunded, not fail.
NEXT_STATUSES: dict[PaymentStatus, frozenset[PaymentStatus]] = {
    S.WAITING: frozenset(set(S) - {S.WAITING}),
    S.CONFIRMING: frozenset(
        {S.CONFIRMED, S.SENDING, S.PARTIALLY_PAID, S.FINISHED, S.FAILED, S.REFUNDED}
    ),
    S.CONFIRMED: frozenset(
        {S.SENDING, S.PARTIALLY_PAID, S.FINISHED, S.FAILED, S.REFUNDED}
    ),
    S.SENDING: frozenset({S.PARTIALLY_PAID, S.FINISHED, S.FAILED, S.REFUNDED}),
    S.PARTIALLY_PAID: frozenset({S.FINISHED, S.REFUNDED}),
    S.FINISHED: frozenset({S.REFUNDED}),
    S.FAILED: frozenset({S.REFUNDED}),
    S.EXPIRED: frozenset(),
    S.REFUNDED: frozenset(),
}
# Statuses at which the money counted in actually_paid has reached the wallet.
MONEY_ARRIVED = frozenset({S.PARTIALLY_PAID, S.FINISHED})


class UnsupportedCurrencyError(ValueError):
    """A pay currency outside the supported assets."""


class InvalidAmountError(ValueError):
    """A provider sent an amount that is not a finite, non-negative number."""


def can_move(current: PaymentStatus, new: PaymentStatus) -> bool:
    return new in NEXT_STATUSES[current]


def asset_label(currency: str) -> str:
    """The metric label for a currency: a supported asset, else ``other``."""
    currency = currency.lower()
    return currency if currency in ASSET_PRECISION else OTHER_ASSET


def require_asset(currency: str) -> str:
    asset = currency.strip().lower()
    if asset not in ASSET_PRECISION:
        supported = ", ".join(ASSET_PRECISION)
        raise UnsupportedCurrencyError(
            f"pay_currency {currency!r} is not supported; use one of {supported}"
        )
    return asset


def quantize_pay_amount(amount: Decimal, asset: str) -> Decimal:
    """Round up to the asset's precision, so rounding never underpays."""
    step = Decimal(1).scaleb(-ASSET_PRECISION[asset])
    return amount.quantize(step, rounding=ROUND_UP)


def parse_amount(value: Any, field: str) -> Decimal:
    """An amount from a provider's JSON as a Decimal; absent means zero.

    JSON numbers reach us as binary floats. NOWPayments computes and signs its
    IPNs in JavaScript, where the number already is that float, and Python's
    shortest round-trip ``repr`` gives the same digits JavaScript prints.
    """
    if value is None or value == "":
        return Decimal(0)
    if isinstance(value, bool):
        raise InvalidAmountError(f"{field} is not an amount: {value!r}")
    if isinstance(value, float):
        if not math.isfinite(value):
            raise InvalidAmountError(f"{field} is not finite: {value!r}")
        value = repr(value)
    try:
        amount = Decimal(str(value))
    except InvalidOperation:
        raise InvalidAmountError(f"{field} is not an amount: {value!r}") from None
    if not amount.is_finite() or amount < 0:
        raise InvalidAmountError(f"{field} is not an amount: {value!r}")
    return amount


def is_paid_in_full(expected: Decimal, paid: Decimal, tolerance: Decimal) -> bool:
    """Whether ``paid`` covers ``expected``, forgiving a shortfall of the ratio."""
    return paid >= expected - expected * tolerance


def order_status_for(status: PaymentStatus, paid_in_full: bool) -> OrderStatus | None:
    """The order status a payment status implies; None leaves the order as is."""
    if status is S.WAITING:
        return OrderStatus.AWAITING_PAYMENT
    if status in (S.CONFIRMING, S.CONFIRMED, S.SENDING):
        return OrderStatus.CONFIRMING
    if status is S.PARTIALLY_PAID:
        return OrderStatus.PAID if paid_in_full else OrderStatus.UNDERPAID
    if status is S.FINISHED:
        return OrderStatus.PAID
    if status is S.FAILED:
        return OrderStatus.FAILED
    if status is S.EXPIRED:
        return OrderStatus.EXPIRED
    return OrderStatus.REFUNDED


# An order's own guard against going backwards, e.g. when a repeated deposit
# has already paid an order whose first payment is still confirming.
ORDER_RANK: dict[OrderStatus, int] = {
    OrderStatus.AWAITING_PAYMENT: 0,
    OrderStatus.CONFIRMING: 1,
    OrderStatus.UNDERPAID: 2,
    OrderStatus.FAILED: 3,
    OrderStatus.EXPIRED: 3,
    OrderStatus.PAID: 4,
    OrderStatus.REFUNDED: 5,
}


def order_can_move(current: OrderStatus, new: OrderStatus) -> bool:
    return ORDER_RANK[new] > ORDER_RANK[current]


@dataclass(frozen=True)
class Ipn:
    """What the payment service reads from one NOWPayments IPN."""

    payment_id: str
    status: PaymentStatus
    actually_paid: Decimal
    pay_currency: str
    parent_payment_id: str | None

    @classmethod
    def from_body(cls, body: dict[str, Any]) -> Ipn:
        """Read an IPN body; raises ValueError for one no retry can fix."""
        try:
            status = PaymentStatus(str(body.get("payment_status", "")))
        except ValueError:
            raise ValueError(
                f"unknown payment_status {body.get('payment_status')!r}"
            ) from None
        parent = body.get("parent_payment_id")
        return cls(
            payment_id=str(body["payment_id"]),
            status=status,
            actually_paid=parse_amount(body.get("actually_paid"), "actually_paid"),
            pay_currency=str(body.get("pay_currency") or "").lower(),
            parent_payment_id=None if parent in (None, "", 0) else str(parent),
        )

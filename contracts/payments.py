"""Events published by the payment service as an order's payment moves on.

Amounts are decimal strings (``"0.00041237"``), never JSON numbers, so that no
consumer rounds them through a binary float.
"""

from __future__ import annotations

import uuid
from decimal import Decimal
from typing import Annotated

from pydantic import Field, PlainSerializer

from contracts.envelope import EventData, register

# Always positional notation: 0.0000001, never 1E-7 as str(Decimal) would write.
Amount = Annotated[
    Decimal, PlainSerializer(lambda amount: format(amount, "f"), return_type=str)
]


class _PaymentEvent(EventData):
    order_id: uuid.UUID = Field(description="BitLoot's order id.")
    payment_id: str = Field(description="The provider's payment id.")
    provider: str = Field(description="nowpayments or simulator.")


@register
class PaymentCreated(_PaymentEvent):
    """An order was placed and its payment opened: where and how much to pay."""

    event_type = "payment.created"

    email: str = Field(description="The shopper's address, to send payment details.")
    pay_address: str = Field(description="The address to send the crypto to.")
    pay_amount: Amount = Field(description="Exactly what to send, in pay_currency.")
    pay_currency: str = Field(description="The asset to pay in, e.g. btc.")
    price_amount: Amount = Field(description="The order's total in price_currency.")
    price_currency: str = Field(description="The catalogue's currency, e.g. usd.")


@register
class PaymentCompleted(_PaymentEvent):
    """The order is paid in full (within the configured tolerance)."""

    event_type = "payment.completed"

    email: str
    pay_currency: str
    pay_amount: Amount = Field(description="What was asked.")
    paid_amount: Amount = Field(description="What arrived, deposits included.")
    price_amount: Amount
    price_currency: str


@register
class PaymentUnderpaid(_PaymentEvent):
    """Less arrived than was asked: the order waits for the rest."""

    event_type = "payment.underpaid"

    email: str
    asset: str = Field(description="The asset paid in, e.g. btc.")
    pay_address: str = Field(description="Where the missing amount can be sent.")
    expected_amount: Amount
    paid_amount: Amount
    missing_amount: Amount


@register
class PaymentFailed(_PaymentEvent):
    """The provider reports the payment failed."""

    event_type = "payment.failed"

    status: str = Field(description="The payment's status: failed.")


@register
class PaymentExpired(_PaymentEvent):
    """Nothing arrived before the payment's time ran out."""

    event_type = "payment.expired"

    status: str = Field(description="The payment's status: expired.")

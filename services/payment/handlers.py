"""The payment service's use cases: place an order, apply an IPN, apply a Kinguin
order update. Each runs in one transaction with the events it stages."""

from __future__ import annotations

import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from decimal import Decimal

import asyncpg
import structlog
from asyncpg.pool import PoolAcquireContext
from pydantic import ValidationError

from contracts.envelope import Envelope, EventData, describe_invalid, wrap
from contracts.payments import (
    PaymentCompleted,
    PaymentCreated,
    PaymentExpired,
    PaymentFailed,
    PaymentUnderpaid,
)
from contracts.webhooks import KinguinWebhookReceived, NowPaymentsIpnReceived
from services.payment import store
from services.payment.domain import (
    MONEY_ARRIVED,
    InvalidAmountError,
    Ipn,
    OrderStatus,
    PaymentStatus,
    asset_label,
    can_move,
    is_paid_in_full,
    order_can_move,
    order_status_for,
    require_asset,
)
from services.payment.metrics import FulfilmentOutcome, IpnOutcome, PaymentMetrics
from services.payment.providers import (
    OpenedPayment,
    PaymentProvider,
    PaymentRequest,
    ProviderError,
    ProviderRefusedError,
    ProviderTimeoutError,
)
from shared.consumer import AfterCommit, PoisonMessageError
from shared.db import Connection
from shared.outbox import add_to_outbox

logger = structlog.get_logger(__name__)

PRODUCER = "payment"
KINGUIN_ORDER_STATUS = "order.status"
MAX_FULFILMENT_STATUS = 32


class UnknownProductError(ValueError):
    """The order names products the catalogue does not sell."""


class MixedCurrenciesError(ValueError):
    """The order's products are priced in different currencies."""


@dataclass(frozen=True)
class PlaceOrder:
    email: str
    items: dict[str, int]
    pay_currency: str
    idempotency_key: str | None
    correlation_id: str


@dataclass(frozen=True)
class PlacedOrder:
    order_id: uuid.UUID
    created: bool


@dataclass
class _Effects:
    """Counters to move once the transaction that justifies them has committed."""

    actions: list[Callable[[], None]] = field(default_factory=list)

    def add(self, action: Callable[[], None]) -> None:
        self.actions.append(action)

    def __call__(self) -> None:
        for action in self.actions:
            action()


class PaymentService:
    """Orders and their payments, from the first request to the last IPN."""

    def __init__(
        self,
        pool: asyncpg.Pool,
        provider: PaymentProvider,
        metrics: PaymentMetrics,
        tolerance: Decimal,
    ) -> None:
        self._pool = pool
        self._provider = provider
        self._metrics = metrics
        self._tolerance = tolerance

    def connection(self) -> PoolAcquireContext:
        """A connection for reads outside the use cases, such as the views."""
        return self._pool.acquire()

    async def place_order(self, command: PlaceOrder) -> PlacedOrder:
        """Open a payment at the provider, then store the order with its event.

        Nothing is stored unless the provider opened the payment, so a refusal
        or an outage leaves no half-made order behind.
        """
        asset = require_asset(command.pay_currency)
        key = command.idempotency_key
        async with self._pool.acquire() as connection:
            if key is not None:
                existing = await store.order_id_for_key(connection, key)
                if existing is not None:
                    return PlacedOrder(existing, created=False)
            products = await store.active_products(connection, list(command.items))

        unknown = sorted(set(command.items) - set(products))
        if unknown:
            raise UnknownProductError(f"no product {', '.join(map(repr, unknown))}")
        currencies = {product.currency for product in products.values()}
        if len(currencies) != 1:
            raise MixedCurrenciesError(
                "the products are priced in different currencies"
            )
        lines = [
            store.OrderLine(products[product_id], quantity)
            for product_id, quantity in sorted(command.items.items())
        ]
        total = sum((line.product.price * line.quantity for line in lines), Decimal(0))
        currency = currencies.pop()

        order_id = uuid.uuid4()
        description = ", ".join(
            f"{line.quantity} x {line.product.name}" for line in lines
        )
        opened = await self._open_payment(
            PaymentRequest(order_id, total, currency, asset, description[:200])
        )

        created = PaymentCreated(
            order_id=order_id,
            payment_id=opened.payment_id,
            provider=opened.provider,
            email=command.email,
            pay_address=opened.pay_address,
            pay_amount=opened.pay_amount,
            pay_currency=opened.pay_currency,
            price_amount=total,
            price_currency=currency,
        )
        envelope = wrap(created, PRODUCER, command.correlation_id)
        try:
            async with self._pool.acquire() as connection, connection.transaction():
                await store.insert_order(
                    connection,
                    order_id,
                    command.email,
                    lines,
                    total,
                    currency,
                    opened,
                    key,
                )
                await add_to_outbox(connection, [envelope])
        except store.DuplicateIdempotencyKeyError:
            assert key is not None
            async with self._pool.acquire() as connection:
                existing = await store.order_id_for_key(connection, key)
            assert existing is not None, "the key's order committed before ours"
            return PlacedOrder(existing, created=False)

        self._metrics.payments.labels(
            status=PaymentStatus.WAITING.value, asset=asset_label(opened.pay_currency)
        ).inc()
        logger.info(
            "order_placed",
            order_id=str(order_id),
            provider=opened.provider,
            payment_id=opened.payment_id,
            asset=opened.pay_currency,
        )
        return PlacedOrder(order_id, created=True)

    async def _open_payment(self, request: PaymentRequest) -> OpenedPayment:
        provider = self._provider.name
        started = time.perf_counter()
        outcome = "ok"
        try:
            return await self._provider.open_payment(request)
        except ProviderRefusedError:
            outcome = "refused"
            raise
        except ProviderTimeoutError:
            outcome = "timeout"
            raise
        except ProviderError:
            outcome = "unavailable"
            raise
        finally:
            self._metrics.provider_requests.labels(
                provider=provider, outcome=outcome
            ).inc()
            self._metrics.provider_duration.labels(provider=provider).observe(
                time.perf_counter() - started
            )

    async def apply_ipn(
        self, connection: Connection, envelope: Envelope
    ) -> AfterCommit:
        """Move a payment, and its order, as far as an IPN allows; never back."""
        try:
            data = NowPaymentsIpnReceived.model_validate(envelope.data)
            ipn = Ipn.from_body(data.body)
        except (ValidationError, InvalidAmountError, ValueError, KeyError) as error:
            reason = describe_invalid(error)
            raise PoisonMessageError(f"unusable IPN: {reason}") from None
        effects = _Effects()

        payment = await store.lock_payment(connection, ipn.payment_id)
        if payment is None and ipn.parent_payment_id is not None:
            parent = await store.lock_payment(connection, ipn.parent_payment_id)
            if parent is not None:
                await self._apply_deposit(
                    connection, parent, ipn, data, envelope, effects
                )
                return effects
        if payment is None:
            logger.warning("ipn_for_unknown_payment", payment_id=ipn.payment_id)
            return self._count_ipn(effects, IpnOutcome.UNKNOWN_PAYMENT)
        if ipn.status is payment.status:
            return self._count_ipn(effects, IpnOutcome.UNCHANGED)
        if not can_move(payment.status, ipn.status):
            logger.info(
                "ipn_stale",
                order_id=str(payment.order_id),
                current=payment.status.value,
                received=ipn.status.value,
            )
            return self._count_ipn(effects, IpnOutcome.STALE)

        actually_paid = max(payment.actually_paid, ipn.actually_paid)
        await store.set_payment_status(
            connection, payment.order_id, ipn.status, actually_paid
        )
        await store.add_history(
            connection,
            payment.order_id,
            "payment",
            payment.status.value,
            ipn.status.value,
            data.delivery_id,
            {
                "actually_paid": _amount(actually_paid),
                "event_id": str(envelope.id),
            },
        )
        asset = asset_label(payment.pay_currency)
        effects.add(
            lambda: self._metrics.payments.labels(
                status=ipn.status.value, asset=asset
            ).inc()
        )
        logger.info(
            "payment_moved",
            order_id=str(payment.order_id),
            from_status=payment.status.value,
            to_status=ipn.status.value,
        )

        arrived = actually_paid if ipn.status in MONEY_ARRIVED else Decimal(0)
        paid = arrived + await store.deposits_paid(connection, payment.order_id)
        in_full = is_paid_in_full(payment.pay_amount, paid, self._tolerance)
        await self._move_order(
            connection,
            payment,
            order_status_for(ipn.status, in_full),
            paid,
            data.delivery_id,
            envelope,
            effects,
        )
        return self._count_ipn(effects, IpnOutcome.APPLIED)

    async def _apply_deposit(
        self,
        connection: Connection,
        parent: store.LockedPayment,
        ipn: Ipn,
        data: NowPaymentsIpnReceived,
        envelope: Envelope,
        effects: _Effects,
    ) -> None:
        """A repeated deposit: more money for an earlier payment, under its own id."""
        previous = await store.deposit_status(
            connection, parent.provider, ipn.payment_id
        )
        if previous is ipn.status:
            self._count_ipn(effects, IpnOutcome.UNCHANGED)
            return
        if previous is not None and not can_move(previous, ipn.status):
            self._count_ipn(effects, IpnOutcome.STALE)
            return

        await store.save_deposit(
            connection,
            parent.order_id,
            parent.provider,
            ipn.payment_id,
            ipn.status,
            ipn.actually_paid,
        )
        await store.add_history(
            connection,
            parent.order_id,
            "deposit",
            None if previous is None else previous.value,
            ipn.status.value,
            data.delivery_id,
            {
                "payment_id": ipn.payment_id,
                "actually_paid": _amount(ipn.actually_paid),
            },
        )
        logger.info(
            "deposit_recorded",
            order_id=str(parent.order_id),
            payment_id=ipn.payment_id,
            status=ipn.status.value,
        )
        self._count_ipn(effects, IpnOutcome.DEPOSIT)
        if ipn.status not in MONEY_ARRIVED:
            return

        first = parent.actually_paid if parent.status in MONEY_ARRIVED else Decimal(0)
        paid = first + await store.deposits_paid(connection, parent.order_id)
        if is_paid_in_full(parent.pay_amount, paid, self._tolerance):
            await self._move_order(
                connection,
                parent,
                OrderStatus.PAID,
                paid,
                data.delivery_id,
                envelope,
                effects,
            )

    async def _move_order(
        self,
        connection: Connection,
        payment: store.LockedPayment,
        status: OrderStatus | None,
        paid: Decimal,
        delivery_id: uuid.UUID,
        cause: Envelope,
        effects: _Effects,
    ) -> None:
        """Set the order's status, if forward, with the event the change means."""
        if status is None or not order_can_move(payment.order_status, status):
            return
        first_underpayment = (
            status is OrderStatus.UNDERPAID and payment.underpaid_at is None
        )
        await store.set_order_status(
            connection, payment.order_id, status, underpaid=first_underpayment
        )
        await store.add_history(
            connection,
            payment.order_id,
            "order",
            payment.order_status.value,
            status.value,
            delivery_id,
            {"paid": _amount(paid)},
        )

        event = self._event_for(payment, status, paid, first_underpayment)
        if event is not None:
            await add_to_outbox(
                connection, [wrap(event, PRODUCER, cause.correlation_id)]
            )
        if first_underpayment:
            asset = asset_label(payment.pay_currency)
            effects.add(
                lambda: self._metrics.underpaid_orders.labels(asset=asset).inc()
            )
            logger.warning(
                "order_underpaid",
                order_id=str(payment.order_id),
                asset=payment.pay_currency,
                expected=_amount(payment.pay_amount),
                paid=_amount(paid),
            )

    def _event_for(
        self,
        payment: store.LockedPayment,
        status: OrderStatus,
        paid: Decimal,
        first_underpayment: bool,
    ) -> EventData | None:
        order_id, payment_id = payment.order_id, payment.payment_id
        provider = payment.provider
        if status is OrderStatus.PAID:
            return PaymentCompleted(
                order_id=order_id,
                payment_id=payment_id,
                provider=provider,
                email=payment.email,
                pay_currency=payment.pay_currency,
                pay_amount=payment.pay_amount,
                paid_amount=paid,
                price_amount=payment.total_amount,
                price_currency=payment.total_currency,
            )
        if status is OrderStatus.UNDERPAID and first_underpayment:
            return PaymentUnderpaid(
                order_id=order_id,
                payment_id=payment_id,
                provider=provider,
                email=payment.email,
                asset=payment.pay_currency,
                pay_address=payment.pay_address,
                expected_amount=payment.pay_amount,
                paid_amount=paid,
                missing_amount=max(payment.pay_amount - paid, Decimal(0)),
            )
        if status is OrderStatus.FAILED:
            return PaymentFailed(
                order_id=order_id,
                payment_id=payment_id,
                provider=provider,
                status=PaymentStatus.FAILED.value,
            )
        if status is OrderStatus.EXPIRED:
            return PaymentExpired(
                order_id=order_id,
                payment_id=payment_id,
                provider=provider,
                status=PaymentStatus.EXPIRED.value,
            )
        return None

    def _count_ipn(self, effects: _Effects, outcome: IpnOutcome) -> AfterCommit:
        effects.add(lambda: self._metrics.ipns.labels(outcome=outcome.value).inc())
        return effects

    async def apply_kinguin(
        self, connection: Connection, envelope: Envelope
    ) -> AfterCommit:
        """Record an order's fulfilment status, unless a newer one is recorded."""
        try:
            data = KinguinWebhookReceived.model_validate(envelope.data)
        except ValidationError as error:
            reason = describe_invalid(error)
            raise PoisonMessageError(f"unusable Kinguin event: {reason}") from None
        effects = _Effects()
        if data.event_name != KINGUIN_ORDER_STATUS:
            return self._count_fulfilment(effects, FulfilmentOutcome.IGNORED)

        body = data.body
        try:
            order_id = uuid.UUID(str(body.get("orderExternalId")))
        except ValueError:
            logger.warning("kinguin_order_not_ours", kinguin_order=body.get("orderId"))
            return self._count_fulfilment(effects, FulfilmentOutcome.UNKNOWN_ORDER)
        status = str(body.get("status") or "")[:MAX_FULFILMENT_STATUS]
        updated_at = _timestamp(body.get("updatedAt"))
        if not status or updated_at is None:
            raise PoisonMessageError("order.status lacks a status or a valid updatedAt")

        current = await store.lock_order_fulfilment(connection, order_id)
        if current is None:
            logger.warning("kinguin_order_unknown", order_id=str(order_id))
            return self._count_fulfilment(effects, FulfilmentOutcome.UNKNOWN_ORDER)
        current_status, current_updated_at = current
        if current_updated_at is not None and updated_at <= current_updated_at:
            logger.info(
                "kinguin_update_stale",
                order_id=str(order_id),
                current=current_status,
                received=status,
            )
            return self._count_fulfilment(effects, FulfilmentOutcome.STALE)

        await store.set_fulfilment(connection, order_id, status, updated_at)
        await store.add_history(
            connection,
            order_id,
            "fulfilment",
            current_status,
            status,
            data.delivery_id,
            {
                "kinguin_order_id": body.get("orderId"),
                "updated_at": updated_at.isoformat(),
            },
        )
        logger.info("fulfilment_updated", order_id=str(order_id), status=status)
        return self._count_fulfilment(effects, FulfilmentOutcome.APPLIED)

    def _count_fulfilment(
        self, effects: _Effects, outcome: FulfilmentOutcome
    ) -> AfterCommit:
        effects.add(
            lambda: self._metrics.fulfilment_updates.labels(outcome=outcome.value).inc()
        )
        return effects


def _timestamp(value: object) -> datetime | None:
    """Kinguin's ISO 8601 updatedAt; a time without a zone is taken as UTC."""
    if not isinstance(value, str):
        return None
    try:
        parsed = datetime.fromisoformat(value)
    except ValueError:
        return None
    return parsed if parsed.tzinfo is not None else parsed.replace(tzinfo=UTC)


def _amount(value: Decimal) -> str:
    """An amount for history and logs, positional: 0.0000001, never 1E-7."""
    return format(value, "f")

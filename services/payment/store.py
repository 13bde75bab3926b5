"""Orders, payments and their history in PostgreSQL; callers own the transaction."""

from __future__ import annotations

import json
import uuid
from dataclasses import dataclass
from datetime import datetime
from decimal import Decimal
from typing import Any

import asyncpg

from services.payment.domain import MONEY_ARRIVED, OrderStatus, PaymentStatus
from services.payment.providers import OpenedPayment
from shared.db import Connection


@dataclass(frozen=True)
class Product:
    id: str
    name: str
    price: Decimal
    currency: str


@dataclass(frozen=True)
class OrderLine:
    product: Product
    quantity: int


@dataclass(frozen=True)
class LockedPayment:
    """A payment and its order, locked until the caller's transaction ends."""

    order_id: uuid.UUID
    provider: str
    payment_id: str
    status: PaymentStatus
    pay_address: str
    pay_amount: Decimal
    pay_currency: str
    actually_paid: Decimal
    order_status: OrderStatus
    email: str
    total_amount: Decimal
    total_currency: str
    underpaid_at: datetime | None


class DuplicateIdempotencyKeyError(Exception):
    """Another request with the same Idempotency-Key created its order first."""


async def active_products(
    connection: Connection, ids: list[str] | None = None
) -> dict[str, Product]:
    rows = await connection.fetch(
        """
        SELECT id, name, price, currency FROM products
        WHERE active AND ($1::text[] IS NULL OR id = ANY($1::text[]))
        ORDER BY id
        """,
        ids,
    )
    return {row["id"]: Product(**dict(row)) for row in rows}


async def order_id_for_key(connection: Connection, key: str) -> uuid.UUID | None:
    order_id: uuid.UUID | None = await connection.fetchval(
        "SELECT id FROM orders WHERE idempotency_key = $1", key
    )
    return order_id


async def insert_order(
    connection: Connection,
    order_id: uuid.UUID,
    email: str,
    lines: list[OrderLine],
    total: Decimal,
    currency: str,
    payment: OpenedPayment,
    idempotency_key: str | None,
) -> None:
    """Store a new order, its items, its payment and their first history rows."""
    try:
        await connection.execute(
            """
            INSERT INTO orders (id, email, status, total_amount, total_currency,
                                idempotency_key)
            VALUES ($1, $2, $3, $4, $5, $6)
            """,
            order_id,
            email,
            OrderStatus.AWAITING_PAYMENT.value,
            total,
            currency,
            idempotency_key,
        )
    except asyncpg.UniqueViolationError:
        raise DuplicateIdempotencyKeyError(idempotency_key) from None
    await connection.executemany(
        """
        INSERT INTO order_items (order_id, product_id, quantity, unit_price)
        VALUES ($1, $2, $3, $4)
        """,
        [
            (order_id, line.product.id, line.quantity, line.product.price)
            for line in lines
        ],
    )
    await connection.execute(
        """
        INSERT INTO payments (order_id, provider, provider_payment_id, status,
                              pay_address, pay_amount, pay_currency, expires_at)
        VALUES ($1, $2, $3, $4, $5, $6, $7, $8)
        """,
        order_id,
        payment.provider,
        payment.payment_id,
        PaymentStatus.WAITING.value,
        payment.pay_address,
        payment.pay_amount,
        payment.pay_currency,
        payment.expires_at,
    )
    await add_history(
        connection, order_id, "order", None, OrderStatus.AWAITING_PAYMENT.value
    )
    await add_history(
        connection,
        order_id,
        "payment",
        None,
        PaymentStatus.WAITING.value,
        detail={"provider": payment.provider, "payment_id": payment.payment_id},
    )


async def add_history(
    connection: Connection,
    order_id: uuid.UUID,
    subject: str,
    from_status: str | None,
    to_status: str,
    delivery_id: uuid.UUID | None = None,
    detail: dict[str, Any] | None = None,
) -> None:
    await connection.execute(
        """
        INSERT INTO order_history (order_id, subject, from_status, to_status,
                                   delivery_id, detail)
        VALUES ($1, $2, $3, $4, $5, $6::jsonb)
        """,
        order_id,
        subject,
        from_status,
        to_status,
        delivery_id,
        json.dumps(detail or {}),
    )


async def lock_payment(
    connection: Connection, provider_payment_id: str
) -> LockedPayment | None:
    """Find a payment by the provider's id and lock it with its order."""
    row = await connection.fetchrow(
        """
        SELECT p.order_id, p.provider, p.provider_payment_id, p.status,
               p.pay_address, p.pay_amount, p.pay_currency, p.actually_paid,
               o.status AS order_status, o.email, o.total_amount,
               o.total_currency, o.underpaid_at
        FROM payments p JOIN orders o ON o.id = p.order_id
        WHERE p.provider_payment_id = $1
        ORDER BY p.provider
        LIMIT 1
        FOR UPDATE
        """,
        provider_payment_id,
    )
    if row is None:
        return None
    return LockedPayment(
        order_id=row["order_id"],
        provider=row["provider"],
        payment_id=row["provider_payment_id"],
        status=PaymentStatus(row["status"]),
        pay_address=row["pay_address"],
        pay_amount=crypto_amount(row["pay_amount"]),
        pay_currency=row["pay_currency"],
        actually_paid=crypto_amount(row["actually_paid"]),
        order_status=OrderStatus(row["order_status"]),
        email=row["email"],
        total_amount=row["total_amount"],
        total_currency=row["total_currency"],
        underpaid_at=row["underpaid_at"],
    )


async def set_payment_status(
    connection: Connection,
    order_id: uuid.UUID,
    status: PaymentStatus,
    actually_paid: Decimal,
) -> None:
    await connection.execute(
        """
        UPDATE payments SET status = $2, actually_paid = $3, updated_at = now()
        WHERE order_id = $1
        """,
        order_id,
        status.value,
        actually_paid,
    )


async def set_order_status(
    connection: Connection,
    order_id: uuid.UUID,
    status: OrderStatus,
    *,
    underpaid: bool = False,
) -> None:
    await connection.execute(
        """
        UPDATE orders
        SET status = $2, updated_at = now(),
            underpaid_at = CASE WHEN $3 THEN coalesce(underpaid_at, now())
                                ELSE underpaid_at END
        WHERE id = $1
        """,
        order_id,
        status.value,
        underpaid,
    )


async def deposit_status(
    connection: Connection, provider: str, provider_payment_id: str
) -> PaymentStatus | None:
    status: str | None = await connection.fetchval(
        """
        SELECT status FROM payment_deposits
        WHERE provider = $1 AND provider_payment_id = $2
        """,
        provider,
        provider_payment_id,
    )
    return None if status is None else PaymentStatus(status)


async def save_deposit(
    connection: Connection,
    order_id: uuid.UUID,
    provider: str,
    provider_payment_id: str,
    status: PaymentStatus,
    actually_paid: Decimal,
) -> None:
    await connection.execute(
        """
        INSERT INTO payment_deposits (provider, provider_payment_id, order_id,
                                      status, actually_paid)
        VALUES ($1, $2, $3, $4, $5)
        ON CONFLICT (provider, provider_payment_id) DO UPDATE
        SET status = excluded.status, actually_paid = excluded.actually_paid,
            updated_at = now()
        """,
        provider,
        provider_payment_id,
        order_id,
        status.value,
        actually_paid,
    )


async def deposits_paid(connection: Connection, order_id: uuid.UUID) -> Decimal:
    """What repeated deposits to an order's payment have brought in."""
    total: Decimal = await connection.fetchval(
        """
        SELECT coalesce(sum(actually_paid), 0) FROM payment_deposits
        WHERE order_id = $1 AND status = ANY($2::text[])
        """,
        order_id,
        [status.value for status in MONEY_ARRIVED],
    )
    return crypto_amount(total)


async def lock_order_fulfilment(
    connection: Connection, order_id: uuid.UUID
) -> tuple[str | None, datetime | None] | None:
    row = await connection.fetchrow(
        """
        SELECT fulfilment_status, fulfilment_updated_at FROM orders
        WHERE id = $1 FOR UPDATE
        """,
        order_id,
    )
    if row is None:
        return None
    return row["fulfilment_status"], row["fulfilment_updated_at"]


async def set_fulfilment(
    connection: Connection, order_id: uuid.UUID, status: str, updated_at: datetime
) -> None:
    await connection.execute(
        """
        UPDATE orders
        SET fulfilment_status = $2, fulfilment_updated_at = $3, updated_at = now()
        WHERE id = $1
        """,
        order_id,
        status,
        updated_at,
    )


async def order_view(
    connection: Connection, order_id: uuid.UUID
) -> dict[str, Any] | None:
    """The order as ``GET /v1/orders/{id}`` shows it; amounts as strings."""
    order = await connection.fetchrow(
        """
        SELECT o.id, o.status, o.total_amount, o.total_currency,
               o.fulfilment_status, o.fulfilment_updated_at, o.created_at,
               o.updated_at, p.provider, p.provider_payment_id,
               p.status AS payment_status, p.pay_address, p.pay_amount,
               p.pay_currency, p.actually_paid, p.expires_at
        FROM orders o JOIN payments p ON p.order_id = o.id
        WHERE o.id = $1
        """,
        order_id,
    )
    if order is None:
        return None
    items = await connection.fetch(
        """
        SELECT i.product_id, p.name, i.quantity, i.unit_price, p.currency
        FROM order_items i JOIN products p ON p.id = i.product_id
        WHERE i.order_id = $1 ORDER BY i.product_id
        """,
        order_id,
    )
    history = await connection.fetch(
        """
        SELECT recorded_at, subject, from_status, to_status, delivery_id, detail
        FROM order_history WHERE order_id = $1 ORDER BY id
        """,
        order_id,
    )
    deposits = await deposits_paid(connection, order_id)
    return {
        "order_id": str(order["id"]),
        "status": order["status"],
        "total": {
            "amount": str(order["total_amount"]),
            "currency": order["total_currency"],
        },
        "items": [
            {
                "product_id": item["product_id"],
                "name": item["name"],
                "quantity": item["quantity"],
                "unit_price": str(item["unit_price"]),
                "currency": item["currency"],
            }
            for item in items
        ],
        "payment": {
            "provider": order["provider"],
            "payment_id": order["provider_payment_id"],
            "status": order["payment_status"],
            "pay_address": order["pay_address"],
            "pay_amount": _amount(order["pay_amount"]),
            "pay_currency": order["pay_currency"],
            "actually_paid": _amount(order["actually_paid"]),
            "deposits_paid": _amount(deposits),
            "expires_at": _time(order["expires_at"]),
        },
        "fulfilment": {
            "status": order["fulfilment_status"],
            "updated_at": _time(order["fulfilment_updated_at"]),
        },
        "created_at": _time(order["created_at"]),
        "updated_at": _time(order["updated_at"]),
        "history": [
            {
                "at": _time(row["recorded_at"]),
                "subject": row["subject"],
                "from": row["from_status"],
                "to": row["to_status"],
                "delivery_id": None
                if row["delivery_id"] is None
                else str(row["delivery_id"]),
                "detail": json.loads(row["detail"]),
            }
            for row in history
        ],
    }


def crypto_amount(value: Decimal) -> Decimal:
    """A crypto amount without its column's trailing zeros.

    numeric(38, 18) returns 0.0001 as 0.000100000000000000; what the events,
    the history and the API show is 0.0001.
    """
    return value.normalize()


def _amount(value: Decimal) -> str:
    """An amount written positionally, never as 1E-7 as str(Decimal) would."""
    return format(crypto_amount(value), "f")


def _time(value: datetime | None) -> str | None:
    return None if value is None else value.isoformat()

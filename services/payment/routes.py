"""The payment service's HTTP API: the catalogue, placing and reading orders."""

from __future__ import annotations

import json
import re
import uuid
from contextlib import AbstractAsyncContextManager
from typing import Annotated, Any

import structlog
from aiohttp import web
from pydantic import BaseModel, ConfigDict, EmailStr, Field, ValidationError

from services.payment import store
from services.payment.domain import UnsupportedCurrencyError
from services.payment.handlers import (
    MixedCurrenciesError,
    PaymentService,
    PlaceOrder,
    UnknownProductError,
)
from services.payment.providers import (
    ProviderRefusedError,
    ProviderTimeoutError,
    ProviderUnavailableError,
)
from shared.http import ApiError, correlation_id_of, read_body, storage_unavailable

logger = structlog.get_logger(__name__)

ORDER_BODY_LIMIT = 16 * 1024
_IDEMPOTENCY_KEY = re.compile(r"[\x21-\x7e]{1,128}")


class OrderItem(BaseModel):
    model_config = ConfigDict(extra="forbid")

    product_id: Annotated[str, Field(min_length=1, max_length=64)]
    quantity: Annotated[int, Field(ge=1, le=100, strict=True)]


class OrderRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")

    email: EmailStr
    items: Annotated[list[OrderItem], Field(min_length=1)]
    pay_currency: Annotated[str, Field(min_length=1, max_length=20)]


class PaymentRoutes:
    """Handlers over the payment service; the service opens once the pool does."""

    def __init__(self, max_items: int) -> None:
        self.service: PaymentService | None = None
        self._max_items = max_items

    def add_to(self, app: web.Application) -> None:
        app.router.add_get("/v1/products", self.products)
        app.router.add_post("/v1/orders", self.place_order)
        app.router.add_get("/v1/orders/{order_id}", self.order)

    def _service(self) -> PaymentService:
        assert self.service is not None, "the service opens before requests arrive"
        return self.service

    async def products(self, request: web.Request) -> web.Response:
        async with _storage(), self._service().connection() as connection:
            products = await store.active_products(connection)
        return web.json_response(
            {
                "products": [
                    {
                        "id": product.id,
                        "name": product.name,
                        "price": str(product.price),
                        "currency": product.currency,
                    }
                    for product in products.values()
                ]
            }
        )

    async def place_order(self, request: web.Request) -> web.Response:
        order = self._parse_order(await read_body(request, ORDER_BODY_LIMIT))
        key = request.headers.get("Idempotency-Key")
        if key is not None and not _IDEMPOTENCY_KEY.fullmatch(key):
            raise ApiError(
                400,
                "invalid_idempotency_key",
                "Idempotency-Key must be 1 to 128 visible ASCII characters",
            )
        items: dict[str, int] = {}
        for item in order.items:
            items[item.product_id] = items.get(item.product_id, 0) + item.quantity
        command = PlaceOrder(
            email=str(order.email),
            items=items,
            pay_currency=order.pay_currency,
            idempotency_key=key,
            correlation_id=correlation_id_of(request),
        )

        try:
            async with _storage():
                placed = await self._service().place_order(command)
        except (UnsupportedCurrencyError, UnknownProductError) as error:
            code = (
                "unsupported_currency"
                if isinstance(error, UnsupportedCurrencyError)
                else "unknown_product"
            )
            raise ApiError(422, code, str(error)) from None
        except MixedCurrenciesError as error:
            raise ApiError(422, "mixed_currencies", str(error)) from None
        except ProviderRefusedError as error:
            raise _refused(error) from None
        except ProviderTimeoutError:
            raise ApiError(
                504,
                "provider_timeout",
                "the payment provider did not answer in time; no order was placed",
                {"Retry-After": "10"},
            ) from None
        except ProviderUnavailableError:
            raise ApiError(
                502,
                "provider_unavailable",
                "the payment provider failed; no order was placed, try again later",
                {"Retry-After": "10"},
            ) from None

        async with _storage(), self._service().connection() as connection:
            view = await store.order_view(connection, placed.order_id)
        assert view is not None
        structlog.contextvars.bind_contextvars(order_id=view["order_id"])
        return web.json_response(
            view,
            status=201 if placed.created else 200,
            headers={"Location": f"/v1/orders/{view['order_id']}"},
        )

    def _parse_order(self, raw: bytes) -> OrderRequest:
        try:
            document: Any = json.loads(raw)
        except (ValueError, RecursionError):
            raise ApiError(400, "invalid_json", "the body is not JSON") from None
        if not isinstance(document, dict):
            raise ApiError(400, "invalid_json", "the body is not a JSON object")
        try:
            order = OrderRequest.model_validate(document)
        except ValidationError as error:
            raise ApiError(422, "invalid_order", _first_problem(error)) from None
        if len(order.items) > self._max_items:
            raise ApiError(
                422,
                "invalid_order",
                f"items: at most {self._max_items} lines in one order",
            )
        return order

    async def order(self, request: web.Request) -> web.Response:
        given = request.match_info["order_id"]
        try:
            order_id = uuid.UUID(given)
        except ValueError:
            raise _not_found(given) from None
        async with _storage(), self._service().connection() as connection:
            view = await store.order_view(connection, order_id)
        if view is None:
            raise _not_found(given)
        return web.json_response(view)


def _storage() -> AbstractAsyncContextManager[None]:
    return storage_unavailable("the order database is unavailable; try again later")


def _refused(error: ProviderRefusedError) -> ApiError:
    if error.refused_credentials:
        logger.error("provider_refused_credentials", code=error.code)
        return ApiError(
            502,
            "provider_unavailable",
            "the payment provider refused this service's credentials",
        )
    return ApiError(
        422, "payment_refused", f"the payment provider refused: {error.message}"
    )


def _not_found(order_id: str) -> ApiError:
    return ApiError(404, "order_not_found", f"no order {order_id[:64]!r}")


def _first_problem(error: ValidationError) -> str:
    problem = error.errors()[0]
    where = ".".join(str(part) for part in problem["loc"]) or "body"
    return f"{where}: {problem['msg']}"

"""A local NOWPayments API a test controls: real shapes, scripted misbehaviour.

It answers ``POST /v1/payment`` the way NOWPayments does (403 for a wrong key,
400 for a bad body, 201 with the payment), records every request it receives,
and plays forced behaviours queued with ``script()`` for the next requests.
"""

from __future__ import annotations

import asyncio
import contextlib
import secrets
from collections import deque
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from decimal import ROUND_UP, Decimal
from typing import Any, Literal

from aiohttp import web

from tests.support.local_server import LocalHttpServer, ReceivedRequest

API_KEY = "test-nowpayments-api-key"
PAYMENT_PATH = "/v1/payment"
# US dollars per unit, as NOWPayments' estimate would price them.
RATES: dict[str, Decimal] = {
    "btc": Decimal("95000"),
    "eth": Decimal("3500"),
    "ltc": Decimal("90"),
    "doge": Decimal("0.20"),
    "usdttrc20": Decimal("1"),
}
PAY_DECIMALS = 8
PAYMENT_LIFETIME = timedelta(minutes=20)

Behaviour = Literal[
    "ok",
    "status_500",
    "status_429",
    "hang",
    "refuse_minimal",
    "garbage",
    "numeric_id",
]
REQUIRED_FIELDS = ("price_amount", "price_currency", "pay_currency")


@dataclass(frozen=True)
class SentResponse:
    """One answer the fake gave: its status and raw body text."""

    status: int
    body: str


class FakeNowPayments(LocalHttpServer):
    """NOWPayments' ``POST /v1/payment`` on 127.0.0.1, on a free port."""

    name = "fake NOWPayments server"

    def __init__(
        self,
        api_key: str = API_KEY,
        *,
        rates: dict[str, Decimal] | None = None,
        hang_seconds: float = 2.0,
    ) -> None:
        super().__init__()
        self.api_key = api_key
        self.rates = dict(RATES if rates is None else rates)
        self.hang_seconds = hang_seconds
        self.responses: list[SentResponse] = []
        self._script: deque[Behaviour] = deque()

    def script(self, *behaviours: Behaviour) -> None:
        """Queue behaviours for the next requests, one each; then it answers ok."""
        self._script.extend(behaviours)

    @property
    def payment_requests(self) -> list[ReceivedRequest]:
        """The requests that reached ``POST /v1/payment``."""
        return [
            r for r in self.requests if r.method == "POST" and r.path == PAYMENT_PATH
        ]

    def add_routes(self, app: web.Application) -> None:
        app.router.add_post(PAYMENT_PATH, self._recorded)

    async def _recorded(self, request: web.Request) -> web.Response:
        response = await self._create_payment(request)
        body = response.body if isinstance(response.body, bytes) else b""
        self.responses.append(SentResponse(response.status, body.decode("utf-8")))
        return response

    async def _create_payment(self, request: web.Request) -> web.Response:
        parsed = (await self.record(request, parse_float=Decimal)).json
        behaviour: Behaviour = self._script.popleft() if self._script else "ok"

        if behaviour == "hang":
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self.stopping.wait(), self.hang_seconds)
        elif behaviour == "status_500":
            return web.Response(
                status=500,
                text="<html><body><h1>500 Internal Server Error</h1></body></html>",
                content_type="text/html",
            )
        elif behaviour == "status_429":
            return web.Response(
                status=429,
                text="Too Many Requests",
                headers={"Retry-After": "0"},
            )
        elif behaviour == "garbage":
            return web.Response(
                status=201,
                text="<html>upstream glitch</html>",
                content_type="text/html",
            )

        if request.headers.get("x-api-key") != self.api_key:
            return _error(403, "INVALID_API_KEY", "Invalid api key")
        if behaviour == "refuse_minimal":
            return _error(
                400,
                "AMOUNT_MINIMAL_ERROR",
                "Crypto amount 0.0000001 is less than minimal",
            )
        problem = self._invalid(parsed)
        if problem is not None:
            return _error(400, "INVALID_REQUEST_PARAMS", problem)
        return self._payment(parsed, numeric_id=behaviour == "numeric_id")

    def _invalid(self, data: Any) -> str | None:
        """What is wrong with a create-payment body, in NOWPayments' words."""
        if not isinstance(data, dict):
            return '"value" must be of type object'
        for field in REQUIRED_FIELDS:
            if field not in data:
                return f'"{field}" is required'
        price = data["price_amount"]
        if isinstance(price, bool) or not isinstance(price, int | Decimal):
            return '"price_amount" must be a number'
        if price <= 0:
            return '"price_amount" must be a positive number'
        if str(data["price_currency"]).lower() != "usd":
            return f"Currency {data['price_currency']} was not found"
        if str(data["pay_currency"]).lower() not in self.rates:
            return f"Currency {data['pay_currency']} was not found"
        return None

    def _payment(self, data: dict[str, Any], *, numeric_id: bool) -> web.Response:
        now = datetime.now(UTC)
        pay_currency = str(data["pay_currency"]).lower()
        price = Decimal(data["price_amount"])
        pay_amount = self.pay_amount_for(price, pay_currency)
        payment_id = secrets.randbelow(9 * 10**9) + 10**9
        answer = {
            "payment_id": payment_id if numeric_id else str(payment_id),
            "payment_status": "waiting",
            "pay_address": "3EZ2uTdVDAMFXTfc6uLDDKR6o8qKBZXVkj",
            # NOWPayments is JavaScript: its amounts are binary floats.
            "price_amount": float(price),
            "price_currency": str(data["price_currency"]).lower(),
            "pay_amount": float(pay_amount),
            "amount_received": float(pay_amount),
            "pay_currency": pay_currency,
            "order_id": data.get("order_id"),
            "order_description": data.get("order_description"),
            "ipn_callback_url": data.get("ipn_callback_url"),
            "created_at": _timestamp(now),
            "updated_at": _timestamp(now),
            "purchase_id": str(secrets.randbelow(9 * 10**9) + 10**9),
            "smart_contract": None,
            "network": pay_currency,
            "network_precision": None,
            "time_limit": None,
            "burning_percent": None,
            "expiration_estimate_date": _timestamp(now + PAYMENT_LIFETIME),
            "is_fixed_rate": False,
            "is_fee_paid_by_user": False,
            "valid_until": _timestamp(now + timedelta(days=7)),
            "type": "crypto2crypto",
        }
        return web.json_response(answer, status=201)

    def pay_amount_for(self, price_amount: Decimal, pay_currency: str) -> Decimal:
        """The pay amount the fake quotes: the price at its fixed rate, rounded up."""
        step = Decimal(1).scaleb(-PAY_DECIMALS)
        rate = self.rates[pay_currency]
        return (price_amount / rate).quantize(step, rounding=ROUND_UP)


def _error(status: int, code: str, message: str) -> web.Response:
    body = {"status": False, "statusCode": status, "code": code, "message": message}
    return web.json_response(body, status=status)


def _timestamp(moment: datetime) -> str:
    return moment.strftime("%Y-%m-%dT%H:%M:%S.") + f"{moment.microsecond // 1000:03d}Z"

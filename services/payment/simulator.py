"""Plays a simulated payment's life: signed NOWPayments IPNs sent to webhook-ingest.

The payment service's ``simulator`` provider opens payments nobody can pay.
``bitloot simulate payment`` stands in for NOWPayments: it sends the IPNs a
real payment would cause, signed with the shared IPN secret, so every service
downstream of webhook-ingest runs exactly as in production.
"""

from __future__ import annotations

import asyncio
import json
import sys
import uuid
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from decimal import ROUND_DOWN, Decimal
from typing import Any, TextIO
from urllib.parse import quote

import aiohttp
from pydantic import SecretStr
from pydantic_settings import BaseSettings

from services.payment.domain import ASSET_PRECISION, PaymentStatus, can_move
from services.payment.providers import SIMULATOR
from services.webhook_ingest.signature import nowpayments_signature
from shared.settings import ENV_CONFIG

PAY = "pay"
EXPIRE = "expire"
FAIL = "fail"
OUTCOMES = (PAY, EXPIRE, FAIL)
IPN_PATH = "/webhooks/nowpayments/ipn"
POLL_SECONDS = 0.2
REQUEST_TIMEOUT_SECONDS = 10.0
# A demo processing fee, so outcome_amount differs from actually_paid as in
# real IPNs; nothing in BitLoot reads it.
DEMO_FEE_RATIO = Decimal("0.005")
# JavaScript numbers hold integers exactly up to 2**53; NOWPayments' ids fit.
_JS_SAFE_INTEGER = 2**53 - 1

S = PaymentStatus
_PAID_IN_FULL = (S.CONFIRMING, S.CONFIRMED, S.SENDING, S.FINISHED)
_UNDERPAID = (S.CONFIRMING, S.PARTIALLY_PAID)
_FAILED = (S.CONFIRMING, S.FAILED)


class SimulateSettings(BaseSettings):
    """Where ``bitloot simulate`` finds the services on this machine."""

    model_config = ENV_CONFIG

    payment_url: str = "http://127.0.0.1:4003"
    webhook_ingest_url: str = "http://127.0.0.1:4004"
    nowpayments_ipn_secret: SecretStr | None = None


class SimulationError(ValueError):
    """The asked-for payment life cannot be played; the message says why."""


def ipn_script(
    order: dict[str, Any],
    paid: Decimal | None,
    outcome: str,
    *,
    first_update: datetime | None = None,
) -> list[dict[str, Any]]:
    """The IPN bodies NOWPayments would send, in order, for one payment's life.

    ``order`` is the JSON of ``GET /v1/orders/{id}``. ``pay`` pays ``paid``
    (default: exactly the amount due) and ends ``partially_paid`` when that is
    less than due, else ``finished``; ``expire`` and ``fail`` end the payment
    unpaid. The first ``updated_at`` is ``first_update``, by default a second
    after the order last changed, and each further IPN a second later.
    """
    if outcome not in OUTCOMES:
        raise SimulationError(
            f"outcome {outcome!r} is not one of {', '.join(OUTCOMES)}"
        )
    if paid is not None and outcome != PAY:
        raise SimulationError(f"an amount paid makes no sense with {outcome!r}")
    if paid is not None and (not paid.is_finite() or paid <= 0):
        raise SimulationError(f"the amount paid must be more than 0, not {paid}")
    payment = order["payment"]
    due = Decimal(payment["pay_amount"])

    steps: tuple[PaymentStatus, ...]
    if outcome == EXPIRE:
        steps, amount = (S.EXPIRED,), Decimal(0)
    elif outcome == FAIL:
        steps, amount = _FAILED, due
    else:
        amount = due if paid is None else paid
        steps = _UNDERPAID if amount < due else _PAID_IN_FULL

    created_at = _parse_time(order["created_at"])
    if first_update is None:
        first_update = _parse_time(order["updated_at"]) + timedelta(seconds=1)
    asset = str(payment["pay_currency"]).lower()
    fields = {
        "payment_id": _provider_id(str(payment["payment_id"])),
        "invoice_id": None,
        "pay_address": payment["pay_address"],
        "price_amount": Decimal(order["total"]["amount"]).normalize(),
        "price_currency": str(order["total"]["currency"]).lower(),
        "pay_amount": due,
        "actually_paid": amount,
        "actually_paid_at_fiat": 0,
        "pay_currency": asset,
        "order_id": order["order_id"],
        "order_description": _description(order),
        "purchase_id": str(uuid.UUID(order["order_id"]).int % 10**10),
        "created_at": _ipn_time(created_at),
        "outcome_amount": _after_fee(amount, asset),
        "outcome_currency": asset,
    }
    return [
        {
            **fields,
            "payment_status": status.value,
            "updated_at": _ipn_time(first_update + timedelta(seconds=step)),
        }
        for step, status in enumerate(steps)
    ]


def ipn_json(body: dict[str, Any]) -> bytes:
    """Serialise an IPN body; a Decimal becomes a JSON number with its own digits.

    Going through float would change the digits the signature and the payment
    service see, so amounts are written from the Decimal, never in exponent form.
    """
    return _json_text(body).encode("utf-8")


async def simulate_payment(
    order_id: str,
    *,
    paid: Decimal | None,
    outcome: str,
    settings: SimulateSettings,
    secret: str,
    wait_seconds: float = 15.0,
    out: TextIO | None = None,
) -> int:
    """Send an order's IPNs through webhook-ingest and wait for the order to move.

    Prints one line per IPN and a summary to ``out`` (standard error when
    None). Returns 0 once the payment service shows the last status, 1 when
    the order is missing, an IPN is not taken or the order does not move in
    ``wait_seconds``, and 2 when the services or the order cannot be used.
    """
    say = _printer(sys.stderr if out is None else out)
    payment_url = settings.payment_url.rstrip("/")
    ingest_url = settings.webhook_ingest_url.rstrip("/")
    if paid is not None and (not paid.is_finite() or paid <= 0):
        say(f"--paid must be more than 0, not {paid}")
        return 2

    timeout = aiohttp.ClientTimeout(total=REQUEST_TIMEOUT_SECONDS)
    async with aiohttp.ClientSession(timeout=timeout) as session:
        # Read the order and check that it may be played.
        try:
            status, order = await _get_order(session, payment_url, order_id)
        except (aiohttp.ClientConnectionError, TimeoutError):
            say(_unreachable("the payment service", payment_url))
            return 2
        if status == 404:
            say(f"no order {order_id!r} at {payment_url}")
            return 1
        if status != 200:
            say(f"the payment service answered {status}: {_detail(order)}")
            return 1
        payment = order["payment"]
        if payment["provider"] != SIMULATOR:
            say(
                f"order {order_id} is paid through {payment['provider']}, not the "
                f"{SIMULATOR}; only simulated payments can be played"
            )
            return 2
        try:
            script = ipn_script(order, paid, outcome, first_update=datetime.now(UTC))
        except SimulationError as error:
            say(str(error))
            return 2
        current, last = S(payment["status"]), S(script[-1]["payment_status"])
        if not can_move(current, last):
            say(f"order {order_id}: its payment is {current}, it cannot become {last}")
            return 2

        # Send the IPNs in order, each answered before the next.
        ipn_url = f"{ingest_url}{IPN_PATH}"
        count = f"{len(script)} IPN{'s' if len(script) > 1 else ''}"
        say(f"order {order_id}: sending {count} to {ipn_url}")
        for body in script:
            raw = ipn_json(body)
            headers = {
                "x-nowpayments-sig": nowpayments_signature(secret, raw),
                "Content-Type": "application/json",
            }
            try:
                status, answer = await _post(session, ipn_url, raw, headers)
            except (aiohttp.ClientConnectionError, TimeoutError):
                say(_unreachable("webhook-ingest", ingest_url))
                return 2
            step = body["payment_status"]
            if status != 200:
                say(f"  {step:<16} {status} {_detail(answer)}")
                if status == 401:
                    say(
                        "webhook-ingest refused the signature: is "
                        "BITLOOT_NOWPAYMENTS_IPN_SECRET the same for both?"
                    )
                    return 2
                say("webhook-ingest did not take the IPN; stopped")
                return 1
            say(f"  {step:<16} {answer.get('status', '?')}")

        # Wait for the payment service to consume them.
        try:
            order = await _wait_for_status(
                session, payment_url, order_id, last, wait_seconds, order
            )
        except (aiohttp.ClientConnectionError, TimeoutError):
            say(_unreachable("the payment service", payment_url))
            return 2
    payment = order["payment"]
    if payment["status"] != last:
        say(
            f"order {order_id}: the payment is still {payment['status']} after "
            f"{wait_seconds:g} s, not {last}; the payment service may not be "
            "consuming IPNs (is it connected to the same RabbitMQ?)"
        )
        return 1
    say(
        f"order {order_id}: {order['status']}, payment {payment['status']}, "
        f"paid {payment['actually_paid']} of {payment['pay_amount']} "
        f"{str(payment['pay_currency']).upper()}"
    )
    return 0


async def _get_order(
    session: aiohttp.ClientSession, payment_url: str, order_id: str
) -> tuple[int, dict[str, Any]]:
    url = f"{payment_url}/v1/orders/{quote(order_id, safe='')}"
    async with session.get(url) as response:
        return response.status, await _json_answer(response)


async def _post(
    session: aiohttp.ClientSession, url: str, raw: bytes, headers: dict[str, str]
) -> tuple[int, dict[str, Any]]:
    async with session.post(url, data=raw, headers=headers) as response:
        return response.status, await _json_answer(response)


async def _wait_for_status(
    session: aiohttp.ClientSession,
    payment_url: str,
    order_id: str,
    status: PaymentStatus,
    wait_seconds: float,
    order: dict[str, Any],
) -> dict[str, Any]:
    """Poll until the payment has ``status``; the last order read successfully."""
    clock = asyncio.get_running_loop()
    deadline = clock.time() + wait_seconds
    while True:
        code, answer = await _get_order(session, payment_url, order_id)
        if code == 200:
            order = answer
        if order["payment"]["status"] == status or clock.time() >= deadline:
            return order
        await asyncio.sleep(POLL_SECONDS)


async def _json_answer(response: aiohttp.ClientResponse) -> dict[str, Any]:
    text = await response.text()
    try:
        answer = json.loads(text)
    except ValueError:
        return {"detail": text[:200]}
    return answer if isinstance(answer, dict) else {"detail": text[:200]}


def _detail(answer: dict[str, Any]) -> str:
    return str(answer.get("detail") or answer.get("error") or "no detail")


def _unreachable(service: str, url: str) -> str:
    return f"{service} is not reachable at {url}; start the services with `make run`"


def _printer(out: TextIO) -> Callable[[str], None]:
    def say(line: str) -> None:
        print(line, file=out, flush=True)

    return say


def _provider_id(payment_id: str) -> int | str:
    """NOWPayments sends its payment ids as JSON numbers."""
    if payment_id.isascii() and payment_id.isdigit():
        number = int(payment_id)
        if number <= _JS_SAFE_INTEGER:
            return number
    return payment_id


def _description(order: dict[str, Any]) -> str:
    lines = ", ".join(
        f"{item['quantity']} x {item['name']}" for item in order.get("items", [])
    )
    return lines[:200]


def _after_fee(amount: Decimal, asset: str) -> Decimal:
    step = Decimal(1).scaleb(-ASSET_PRECISION.get(asset, 8))
    return (amount * (1 - DEMO_FEE_RATIO)).quantize(step, rounding=ROUND_DOWN)


def _parse_time(text: str) -> datetime:
    moment = datetime.fromisoformat(text)
    return moment if moment.tzinfo is not None else moment.replace(tzinfo=UTC)


def _ipn_time(moment: datetime) -> str:
    """ISO 8601 in UTC with milliseconds and a ``Z``, as NOWPayments writes it."""
    text = moment.astimezone(UTC).isoformat(timespec="milliseconds")
    return text.removesuffix("+00:00") + "Z"


def _json_text(value: Any) -> str:
    if isinstance(value, Decimal):
        if not value.is_finite():
            raise ValueError(f"an IPN amount must be finite, not {value}")
        return format(value, "f")
    if isinstance(value, float):
        raise TypeError(f"IPN amounts are Decimal, never float: {value!r}")
    if isinstance(value, dict):
        members = []
        for key, item in value.items():
            if not isinstance(key, str):
                raise TypeError(f"IPN keys are strings, not {type(key).__name__}")
            members.append(f"{json.dumps(key)}:{_json_text(item)}")
        return "{" + ",".join(members) + "}"
    if isinstance(value, list | tuple):
        return "[" + ",".join(_json_text(item) for item in value) + "]"
    return json.dumps(value)

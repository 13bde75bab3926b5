"""The NOWPayments API client: opens a payment with ``POST /v1/payment``.

Amounts stay ``Decimal`` both ways: the request body carries ``price_amount`` as
the Decimal's own digits and answers are parsed with ``parse_float=Decimal``.
Connection errors, timeouts, 5xx and 429 are retried with a doubling delay; any
other 4xx is a refusal and is not retried, and neither is a 2xx we cannot read,
since the provider may already have created that payment.
"""

from __future__ import annotations

import asyncio
import json
import math
from collections.abc import Callable
from datetime import UTC, datetime
from decimal import Decimal
from typing import Any

import aiohttp
import structlog

from services.payment.domain import InvalidAmountError, parse_amount, require_asset
from services.payment.providers import (
    NOWPAYMENTS,
    OpenedPayment,
    PaymentRequest,
    ProviderRefusedError,
    ProviderTimeoutError,
    ProviderUnavailableError,
)
from shared.http_client import LazyClientSession

logger = structlog.get_logger(__name__)

PAYMENT_PATH = "/v1/payment"
RETRY_AFTER_CAP_SECONDS = 5.0
EXCERPT_CHARS = 200
_PRICE_PLACEHOLDER = "__bitloot_price_amount__"

OUTCOME_OK = "ok"
OUTCOME_REFUSED = "refused"
OUTCOME_TIMEOUT = "timeout"
OUTCOME_UNAVAILABLE = "unavailable"


class _Transient(Exception):
    """One attempt failed in a way that asking again may fix."""

    def __init__(
        self, what: str, *, timed_out: bool, retry_after: float | None = None
    ) -> None:
        super().__init__(what)
        self.what = what
        self.timed_out = timed_out
        self.retry_after = retry_after


class NowPaymentsProvider:
    """Opens payments with NOWPayments over HTTP; implements ``PaymentProvider``."""

    name = NOWPAYMENTS

    def __init__(
        self,
        *,
        api_key: str,
        base_url: str,
        ipn_callback_url: str,
        timeout: float,
        retries: int,
        backoff: float = 0.5,
        on_attempt: Callable[[str], None] | None = None,
    ) -> None:
        """Configure the client; no connection is made until the first payment.

        ``timeout`` bounds each attempt in seconds, ``retries`` counts the extra
        attempts after the first on transient failures, ``backoff`` is the first
        retry delay (doubling each retry), and ``on_attempt`` is told each
        attempt's outcome: ``ok``, ``refused``, ``timeout`` or ``unavailable``.
        """
        if not api_key:
            raise ValueError("the NOWPayments API key is empty")
        if timeout <= 0:
            raise ValueError("timeout must be positive")
        if retries < 0:
            raise ValueError("retries must not be negative")
        if backoff < 0:
            raise ValueError("backoff must not be negative")
        self._api_key = api_key
        self._base_url = base_url.rstrip("/")
        self._ipn_callback_url = ipn_callback_url
        self._timeout = timeout
        self._retries = retries
        self._backoff = backoff
        self._on_attempt = on_attempt
        self._http = LazyClientSession(timeout)

    @property
    def base_url(self) -> str:
        """The API's base URL, without a trailing slash."""
        return self._base_url

    async def open_payment(self, request: PaymentRequest) -> OpenedPayment:
        """Open a payment for ``request`` and return where and how much to pay.

        Raises ``ProviderRefusedError`` when NOWPayments says no (4xx other than
        429), ``ProviderTimeoutError`` when the last attempt timed out, and
        ``ProviderUnavailableError`` for every other failure. An unsupported
        ``pay_currency`` or a non-finite price is a ``ValueError``, before any
        request is sent.
        """
        asset = require_asset(request.pay_currency)
        body = self._payment_body(request, asset)
        attempts = 1 + self._retries
        for attempt in range(1, attempts + 1):
            try:
                return await self._attempt(attempt, body, asset)
            except _Transient as failure:
                if attempt == attempts:
                    message = (
                        f"POST {PAYMENT_PATH}: {failure.what} "
                        f"(after {attempts} attempt{'s' if attempts > 1 else ''})"
                    )
                    if failure.timed_out:
                        raise ProviderTimeoutError(message) from None
                    raise ProviderUnavailableError(message) from None
                delay = self._backoff * 2 ** (attempt - 1)
                if failure.retry_after is not None:
                    delay = failure.retry_after
                await asyncio.sleep(delay)
        raise AssertionError("unreachable: the last attempt returns or raises")

    async def close(self) -> None:
        """Close the HTTP session, if one was opened."""
        await self._http.close()

    def _payment_body(self, request: PaymentRequest, asset: str) -> bytes:
        """The JSON body, with ``price_amount`` written as the Decimal's digits."""
        price = request.price_amount
        if not price.is_finite():
            raise ValueError(f"price_amount is not finite: {price}")
        fields: dict[str, Any] = {
            "price_amount": _PRICE_PLACEHOLDER,
            "price_currency": request.price_currency.strip().lower(),
            "pay_currency": asset,
            "order_id": str(request.order_id),
            "order_description": request.description,
            "ipn_callback_url": self._ipn_callback_url,
        }
        text = json.dumps(fields, ensure_ascii=False)
        placeholder = json.dumps(_PRICE_PLACEHOLDER)
        text = text.replace(placeholder, _number_text(price), 1)
        return text.encode("utf-8")

    async def _attempt(self, attempt: int, body: bytes, asset: str) -> OpenedPayment:
        """One POST; returns the payment or raises a final or a transient error."""
        headers = {
            "x-api-key": self._api_key,
            "Content-Type": "application/json",
            "Accept": "application/json",
        }
        session = self._http.get()
        try:
            async with session.post(
                self._base_url + PAYMENT_PATH,
                data=body,
                headers=headers,
                allow_redirects=False,
            ) as response:
                status = response.status
                retry_after = response.headers.get("Retry-After")
                try:
                    raw = await response.read()
                except (TimeoutError, aiohttp.ClientError, OSError) as error:
                    if 200 <= status < 300:
                        # Not retried: the payment may exist already.
                        detail = self._redact(_describe(error))
                        self._failed(attempt, status=status, error=detail)
                        message = (
                            f"POST {PAYMENT_PATH}: HTTP {status} but the body "
                            f"could not be read ({detail})"
                        )
                        if isinstance(error, TimeoutError):
                            self._count(OUTCOME_TIMEOUT)
                            raise ProviderTimeoutError(message) from None
                        self._count(OUTCOME_UNAVAILABLE)
                        raise ProviderUnavailableError(message) from None
                    raise
        except TimeoutError:
            # Also aiohttp's ServerTimeoutError, which is a ClientError too.
            what = f"no answer within {self._timeout:g} s"
            self._failed(attempt, error="timeout")
            self._count(OUTCOME_TIMEOUT)
            raise _Transient(what, timed_out=True) from None
        except (aiohttp.ClientError, OSError) as error:
            detail = self._redact(_describe(error))
            what = f"connection failed ({detail})"
            self._failed(attempt, error=detail)
            self._count(OUTCOME_UNAVAILABLE)
            raise _Transient(what, timed_out=False) from None

        text = self._redact(raw.decode("utf-8", errors="replace"))
        if 200 <= status < 300:
            try:
                payment = self._opened_payment(status, text, asset)
            except ProviderUnavailableError as error:
                self._failed(attempt, status=status, error=str(error))
                self._count(OUTCOME_UNAVAILABLE)
                raise
            self._count(OUTCOME_OK)
            return payment
        if status == 429 or status >= 500:
            self._failed(attempt, status=status)
            self._count(OUTCOME_UNAVAILABLE)
            what = f"HTTP {status}: {_excerpt(text)}"
            wait = _retry_after_seconds(retry_after) if status == 429 else None
            raise _Transient(what, timed_out=False, retry_after=wait)
        if 400 <= status < 500:
            refusal = _refusal(status, text)
            self._failed(attempt, status=status, code=refusal.code)
            self._count(OUTCOME_REFUSED)
            raise refusal
        # 1xx or 3xx: a wrong base URL, most likely; asking again will not help.
        self._failed(attempt, status=status)
        self._count(OUTCOME_UNAVAILABLE)
        raise ProviderUnavailableError(
            f"POST {PAYMENT_PATH}: unexpected HTTP {status}: {_excerpt(text)}"
        )

    def _opened_payment(self, status: int, text: str, asset: str) -> OpenedPayment:
        """Map a 2xx answer to an ``OpenedPayment``, or say what is wrong with it."""
        prefix = f"POST {PAYMENT_PATH}: HTTP {status} answer"
        try:
            data = json.loads(text, parse_float=Decimal)
        except ValueError:
            raise ProviderUnavailableError(
                f"{prefix} is not JSON: {_excerpt(text)}"
            ) from None
        if not isinstance(data, dict):
            raise ProviderUnavailableError(f"{prefix} is not a JSON object")

        payment_id = data.get("payment_id")
        if isinstance(payment_id, bool) or not isinstance(payment_id, str | int):
            raise ProviderUnavailableError(f"{prefix} lacks payment_id")
        payment_id = str(payment_id).strip()
        if not payment_id:
            raise ProviderUnavailableError(f"{prefix} lacks payment_id")

        pay_address = data.get("pay_address")
        if not isinstance(pay_address, str) or not pay_address.strip():
            raise ProviderUnavailableError(f"{prefix} lacks pay_address")

        try:
            pay_amount = parse_amount(data.get("pay_amount"), "pay_amount")
        except InvalidAmountError as error:
            raise ProviderUnavailableError(f"{prefix}: {error}") from None
        if pay_amount <= 0:
            raise ProviderUnavailableError(f"{prefix} lacks a positive pay_amount")

        pay_currency = data.get("pay_currency")
        if pay_currency is None:
            pay_currency = asset
        if not isinstance(pay_currency, str) or pay_currency.lower() != asset:
            raise ProviderUnavailableError(
                f"{prefix} is in pay_currency {pay_currency!r}, not {asset!r}"
            )

        return OpenedPayment(
            provider=self.name,
            payment_id=payment_id,
            pay_address=pay_address.strip(),
            pay_amount=pay_amount,
            pay_currency=asset,
            expires_at=_expiry(data.get("expiration_estimate_date"), payment_id),
        )

    def _failed(self, attempt: int, **fields: Any) -> None:
        logger.warning(
            "nowpayments_attempt_failed",
            attempt=attempt,
            attempts=1 + self._retries,
            path=PAYMENT_PATH,
            **fields,
        )

    def _count(self, outcome: str) -> None:
        if self._on_attempt is not None:
            self._on_attempt(outcome)

    def _redact(self, text: str) -> str:
        """The text with the API key masked, in case a body echoes it."""
        return text.replace(self._api_key, "***")


def _number_text(amount: Decimal) -> str:
    """A Decimal as a JSON number: its own digits, never through a float."""
    return format(amount, "f")


def _refusal(status: int, text: str) -> ProviderRefusedError:
    code = f"HTTP_{status}"
    message = _excerpt(text)
    try:
        data = json.loads(text, parse_float=Decimal)
    except ValueError:
        data = None
    if isinstance(data, dict):
        if isinstance(data.get("code"), str) and data["code"]:
            code = data["code"]
        if isinstance(data.get("message"), str) and data["message"]:
            message = data["message"]
    return ProviderRefusedError(status, code, message)


def _retry_after_seconds(value: str | None) -> float | None:
    """A numeric ``Retry-After`` in seconds, capped; None when absent or a date."""
    if value is None:
        return None
    try:
        seconds = float(value.strip())
    except ValueError:
        return None
    if math.isnan(seconds) or seconds < 0:
        return None
    return min(seconds, RETRY_AFTER_CAP_SECONDS)


def _expiry(value: Any, payment_id: str) -> datetime | None:
    """``expiration_estimate_date`` as an aware datetime; None if absent or odd."""
    if not isinstance(value, str) or not value:
        return None
    try:
        moment = datetime.fromisoformat(value)
    except ValueError:
        logger.warning(
            "nowpayments_expiry_unreadable", payment_id=payment_id, value=value
        )
        return None
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=UTC)
    return moment


def _excerpt(text: str) -> str:
    flat = " ".join(text.split())
    if not flat:
        return "(empty body)"
    if len(flat) > EXCERPT_CHARS:
        return flat[:EXCERPT_CHARS] + "…"
    return flat


def _describe(error: BaseException) -> str:
    detail = str(error)
    name = type(error).__name__
    return f"{name}: {detail}" if detail else name

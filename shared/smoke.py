"""``bitloot smoke``: drive every service once and check that each metric moved.

The scenario an SRE runs after a deploy, or against ``make run``: every
service alive and ready, ``/metrics`` guarded, the OTP rate limit and a wrong
code, an order and its how-to-pay email, a refused webhook signature, a
duplicate delivery, and an underpaid order with its email. Each step reads the
counters it should move before and after, so a step passes only when the
system both answered right and counted it. One line per step; the exit status
is 0 when every step passed, 1 otherwise, 2 when the smoke test cannot start.
"""

from __future__ import annotations

import asyncio
import contextlib
import io
import secrets
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping
from dataclasses import dataclass
from decimal import Decimal
from typing import Any, TextIO

import aiohttp
from prometheus_client.parser import text_string_to_metric_families

from services.otp.domain import ADDRESS_REQUESTS_PER_WINDOW
from services.payment.providers import SIMULATOR
from services.payment.simulator import (
    IPN_PATH,
    SimulateSettings,
    ipn_json,
    ipn_script,
    simulate_payment,
)
from services.webhook_ingest.signature import nowpayments_signature

REQUEST_TIMEOUT_SECONDS = 10.0
POLL_SECONDS = 0.25
PRODUCT = "steam-gift-card-20"
PAY_CURRENCY = "btc"
OTP_LIMIT = ADDRESS_REQUESTS_PER_WINDOW

Samples = dict[tuple[str, frozenset[tuple[str, str]]], float]


class SmokeSettings(SimulateSettings):
    """Where ``bitloot smoke`` finds the services; make run's ports by default."""

    otp_url: str = "http://127.0.0.1:4001"
    email_url: str = "http://127.0.0.1:4002"

    def service_urls(self) -> dict[str, str]:
        return {
            "otp": self.otp_url.rstrip("/"),
            "email": self.email_url.rstrip("/"),
            "payment": self.payment_url.rstrip("/"),
            "webhook-ingest": self.webhook_ingest_url.rstrip("/"),
        }


class StepFailedError(Exception):
    """A smoke step saw a wrong answer or a metric that did not move."""


@dataclass
class SmokeRun:
    """What the steps share: the services, a session, the token, the order."""

    urls: dict[str, str]
    session: aiohttp.ClientSession
    token: str
    ipn_secret: str
    wait_seconds: float
    order: dict[str, Any] | None = None

    async def scrape(self, service: str) -> Samples:
        """The service's /metrics as Prometheus would read it."""
        headers = {"Authorization": f"Bearer {self.token}"}
        url = f"{self.urls[service]}/metrics"
        async with _reaching(service), self.session.get(url, headers=headers) as reply:
            text = await reply.text()
            if reply.status != 200:
                raise StepFailedError(
                    f"{service} /metrics answered {reply.status}: {text[:120]}"
                )
        samples: Samples = {}
        for family in text_string_to_metric_families(text):
            for sample in family.samples:
                key = (sample.name, frozenset(sample.labels.items()))
                samples[key] = sample.value
        return samples

    async def counter(self, service: str, name: str, **labels: str) -> float:
        """The sum of the series of ``name`` whose labels include ``labels``."""
        return total(await self.scrape(service), name, labels)

    async def wait_for_increase(
        self, service: str, name: str, before: float, by: float, **labels: str
    ) -> float:
        """Poll until the counter rose by ``by``; StepFailedError when it does not."""
        deadline = time.monotonic() + self.wait_seconds
        while True:
            now = await self.counter(service, name, **labels)
            if now - before >= by:
                return now - before
            if time.monotonic() >= deadline:
                shown = ",".join(f'{k}="{v}"' for k, v in labels.items())
                raise StepFailedError(
                    f"{name}{{{shown}}} on {service} rose by {now - before:g}, "
                    f"not {by:g}, within {self.wait_seconds:g} s"
                )
            await asyncio.sleep(POLL_SECONDS)

    async def call(
        self,
        method: str,
        service: str,
        path: str,
        *,
        json_body: Any = None,
        data: bytes | None = None,
        headers: Mapping[str, str] | None = None,
    ) -> tuple[int, dict[str, Any], Mapping[str, str]]:
        """One request; the status, the JSON answer (or its detail) and headers."""
        url = f"{self.urls[service]}{path}"
        async with (
            _reaching(service),
            self.session.request(
                method, url, json=json_body, data=data, headers=headers
            ) as response,
        ):
            text = await response.text()
            try:
                answer = await response.json(content_type=None)
            except ValueError:
                answer = {"detail": text[:200]}
            if not isinstance(answer, dict):
                answer = {"detail": text[:200]}
            return response.status, answer, response.headers


def total(samples: Samples, name: str, labels: Mapping[str, str]) -> float:
    """Sum every series of ``name`` that carries all of ``labels``."""
    wanted = set(labels.items())
    return sum(
        value
        for (sample, sample_labels), value in samples.items()
        if sample == name and wanted <= sample_labels
    )


def expect(condition: bool, message: str) -> None:
    if not condition:
        raise StepFailedError(message)


async def check_health(run: SmokeRun) -> str:
    """Every service answers /healthz and /readyz with 200."""
    for service in run.urls:
        for path in ("/healthz", "/readyz"):
            status, answer, _ = await run.call("GET", service, path)
            expect(
                status == 200,
                f"{service} {path} answered {status}: {answer.get('detail', answer)}",
            )
    return f"{len(run.urls)} services alive and ready"


async def check_metrics_guard(run: SmokeRun) -> str:
    """/metrics takes the token and refuses a scrape without one."""
    for service in run.urls:
        await run.scrape(service)
        status, _, _ = await run.call("GET", service, "/metrics")
        expect(status == 401, f"{service} /metrics without a token answered {status}")
    return "the token reads /metrics everywhere; no token gets 401"


async def check_otp_rate_limit(run: SmokeRun) -> str:
    """A fourth code for one address within a minute is refused and counted."""
    email = f"smoke-{secrets.token_hex(6)}@example.com"
    name = "bitloot_otp_rate_limit_exceeded_total"
    before = await run.counter("otp", name, operation="issue")
    for attempt in range(1, OTP_LIMIT + 1):
        status, answer, _ = await run.call(
            "POST", "otp", "/v1/otp/request", json_body={"email": email}
        )
        expect(status == 202, f"code request {attempt} answered {status}: {answer}")
    status, answer, headers = await run.call(
        "POST", "otp", "/v1/otp/request", json_body={"email": email}
    )
    expect(status == 429, f"request {OTP_LIMIT + 1} answered {status}, not 429")
    expect("Retry-After" in headers, "the 429 carries no Retry-After")
    await run.wait_for_increase("otp", name, before, 1, operation="issue")
    return f"request {OTP_LIMIT + 1} refused (Retry-After {headers['Retry-After']} s)"


async def check_otp_wrong_code(run: SmokeRun) -> str:
    """A wrong code is refused as invalid_code and counted."""
    email = f"smoke-{secrets.token_hex(6)}@example.com"
    name = "bitloot_otp_verification_failed_total"
    before = await run.counter("otp", name, reason="invalid_code")
    status, answer, _ = await run.call(
        "POST", "otp", "/v1/otp/request", json_body={"email": email}
    )
    expect(status == 202, f"code request answered {status}: {answer}")
    # A random guess is right once in a million; the step then says so.
    guess = f"{secrets.randbelow(10**6):06d}"
    status, answer, _ = await run.call(
        "POST", "otp", "/v1/otp/verify", json_body={"email": email, "code": guess}
    )
    expect(
        status == 401 and answer.get("error") == "invalid_code",
        f"a wrong code answered {status} {answer.get('error')}, not 401 invalid_code",
    )
    await run.wait_for_increase("otp", name, before, 1, reason="invalid_code")
    return "401 invalid_code, counted"


async def check_order_email(run: SmokeRun) -> str:
    """An order is placed and its how-to-pay email is sent."""
    name = "bitloot_email_send_success_total"
    before = await run.counter("email", name, type="payment_created")
    body = {
        "email": f"smoke-{secrets.token_hex(6)}@example.com",
        "items": [{"product_id": PRODUCT, "quantity": 1}],
        "pay_currency": PAY_CURRENCY,
    }
    status, answer, _ = await run.call("POST", "payment", "/v1/orders", json_body=body)
    expect(status == 201, f"POST /v1/orders answered {status}: {answer}")
    run.order = answer
    await run.wait_for_increase("email", name, before, 1, type="payment_created")
    return f"order {answer['order_id']} placed, its email sent"


async def check_bad_signature(run: SmokeRun) -> str:
    """An IPN with a wrong signature is refused and counted."""
    name = "bitloot_invalid_hmac_count_total"
    labels = {"provider": "nowpayments", "reason": "verification_failed"}
    before = await run.counter("webhook-ingest", name, **labels)
    raw = b'{"payment_id":1,"payment_status":"waiting"}'
    status, _, _ = await run.call(
        "POST",
        "webhook-ingest",
        IPN_PATH,
        data=raw,
        headers={"x-nowpayments-sig": "0" * 128, "Content-Type": "application/json"},
    )
    expect(status == 401, f"a wrong signature answered {status}, not 401")
    await run.wait_for_increase("webhook-ingest", name, before, 1, **labels)
    return "401, counted as verification_failed"


async def check_duplicate(run: SmokeRun) -> str:
    """The same signed IPN twice: accepted, then answered and counted duplicate."""
    order = _require_order(run)
    name = "bitloot_duplicate_webhook_count_total"
    before = await run.counter("webhook-ingest", name, provider="nowpayments")
    # The first IPN of the underpayment the next step plays: a real step.
    raw = ipn_json(ipn_script(order, _half_due(order), "pay")[0])
    headers = {
        "x-nowpayments-sig": nowpayments_signature(run.ipn_secret, raw),
        "Content-Type": "application/json",
    }
    answers = []
    for _ in range(2):
        status, answer, _ = await run.call(
            "POST", "webhook-ingest", IPN_PATH, data=raw, headers=headers
        )
        expect(status == 200, f"a signed IPN answered {status}: {answer}")
        answers.append(answer.get("status"))
    expect(
        answers == ["accepted", "duplicate"],
        f"two copies were answered {answers}, not accepted then duplicate",
    )
    await run.wait_for_increase(
        "webhook-ingest", name, before, 1, provider="nowpayments"
    )
    return "accepted, then duplicate, counted"


async def check_underpayment(run: SmokeRun) -> str:
    """Paying half the order marks it underpaid once, counted and emailed."""
    order = _require_order(run)
    asset = str(order["payment"]["pay_currency"]).lower()
    underpaid_before = await run.counter(
        "payment", "bitloot_underpaid_orders_total", asset=asset
    )
    email_before = await run.counter(
        "email", "bitloot_email_send_success_total", type="underpaid"
    )
    quiet = io.StringIO()
    code = await simulate_payment(
        order["order_id"],
        paid=_half_due(order),
        outcome="pay",
        settings=SimulateSettings(
            payment_url=run.urls["payment"],
            webhook_ingest_url=run.urls["webhook-ingest"],
        ),
        secret=run.ipn_secret,
        wait_seconds=run.wait_seconds,
        out=quiet,
    )
    said = quiet.getvalue().strip().splitlines() or ["no output"]
    expect(code == 0, f"the simulated underpayment failed: {said[-1]}")
    await run.wait_for_increase(
        "payment", "bitloot_underpaid_orders_total", underpaid_before, 1, asset=asset
    )
    await run.wait_for_increase(
        "email", "bitloot_email_send_success_total", email_before, 1, type="underpaid"
    )
    return f"order underpaid in {asset}, counted once, its email sent"


def _half_due(order: dict[str, Any]) -> Decimal:
    due = Decimal(order["payment"]["pay_amount"])
    return (due / 2).quantize(Decimal("0.00000001"))


def _require_order(run: SmokeRun) -> dict[str, Any]:
    """The order the order step placed, if its payment may be played here.

    Only a simulated payment may be: signed IPNs for a real provider's
    payment would move it without any money having arrived.
    """
    if run.order is None:
        raise StepFailedError("no order: the order step did not pass")
    provider = run.order["payment"]["provider"]
    if provider != SIMULATOR:
        raise StepFailedError(
            f"the payment service opens payments at {provider}; smoke plays IPNs "
            f"only for the {SIMULATOR} (BITLOOT_PAYMENT_PROVIDER=simulator)"
        )
    return run.order


Step = Callable[[SmokeRun], Awaitable[str]]
STEPS: tuple[tuple[str, Step], ...] = (
    ("health", check_health),
    ("metrics auth", check_metrics_guard),
    ("otp rate limit", check_otp_rate_limit),
    ("otp wrong code", check_otp_wrong_code),
    ("order and email", check_order_email),
    ("bad signature", check_bad_signature),
    ("duplicate", check_duplicate),
    ("underpayment", check_underpayment),
)


async def run_smoke(
    settings: SmokeSettings,
    *,
    token: str,
    ipn_secret: str,
    out: TextIO,
    wait_seconds: float = 20.0,
) -> int:
    """Run every step, print a line each and a summary; 0 when all passed."""
    timeout = aiohttp.ClientTimeout(total=REQUEST_TIMEOUT_SECONDS)
    failed = 0
    async with aiohttp.ClientSession(timeout=timeout) as session:
        run = SmokeRun(
            settings.service_urls(), session, token, ipn_secret, wait_seconds
        )
        for name, step in STEPS:
            started = time.monotonic()
            try:
                detail = await step(run)
            except StepFailedError as error:
                outcome, detail = "FAIL", str(error)
            else:
                outcome = "PASS"
            failed += outcome == "FAIL"
            elapsed = time.monotonic() - started
            print(f"{outcome}  {name:<16} {detail} ({elapsed:.1f} s)", file=out)
            out.flush()
    passed = len(STEPS) - failed
    print(f"smoke: {passed} passed, {failed} failed", file=out, flush=True)
    return 0 if failed == 0 else 1


@contextlib.asynccontextmanager
async def _reaching(service: str) -> AsyncIterator[None]:
    """Turn a connection failure into a step failure that names the service."""
    try:
        yield
    except aiohttp.ClientConnectorError as error:
        message = f"{service}: cannot connect to {error.host}:{error.port}; is it up?"
        raise StepFailedError(message) from None
    except TimeoutError:
        message = f"{service}: no answer within {REQUEST_TIMEOUT_SECONDS:g} s"
        raise StepFailedError(message) from None
    except aiohttp.ClientError as error:
        raise StepFailedError(f"{service}: {type(error).__name__}: {error}") from None

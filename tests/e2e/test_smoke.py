"""``bitloot smoke`` against services started here: a line per step, a verdict."""

from __future__ import annotations

import io
import socket

from shared.smoke import SmokeSettings, run_smoke
from tests.conftest import NOWPAYMENTS_SECRET, StartEmail, StartIngest, StartPayment
from tests.support.fake_nowpayments import API_KEY, FakeNowPayments
from tests.support.metrics import scrape
from tests.support.smtp_server import SmtpServer
from tests.support.webhooks import deliveries


def closed_port() -> int:
    """A port nothing listens on: bound once, then released."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


async def test_smoke_fails_and_names_the_service_that_is_not_running(
    start_ingest: StartIngest,
    start_payment: StartPayment,
    start_email: StartEmail,
    metrics_token: str,
) -> None:
    """With otp away, its steps fail by name, the others still run, exit is 1."""
    async with SmtpServer() as smtp:
        email = await start_email(smtp_port=smtp.port)
        ingest = await start_ingest()
        payment = await start_payment()
        otp_port = closed_port()
        settings = SmokeSettings(
            otp_url=f"http://127.0.0.1:{otp_port}",
            email_url=email.url,
            payment_url=payment.url,
            webhook_ingest_url=ingest.url,
        )
        out = io.StringIO()

        code = await run_smoke(
            settings,
            token=metrics_token,
            ipn_secret=NOWPAYMENTS_SECRET,
            out=out,
            wait_seconds=10,
        )

    *steps, summary = out.getvalue().splitlines()
    outcomes = {line[6:22].strip(): line[:4] for line in steps}
    assert code == 1
    assert outcomes == {
        "health": "FAIL",
        "metrics auth": "FAIL",
        "otp rate limit": "FAIL",
        "otp wrong code": "FAIL",
        "order and email": "PASS",
        "bad signature": "PASS",
        "duplicate": "PASS",
        "underpayment": "PASS",
    }
    assert f"otp: cannot connect to 127.0.0.1:{otp_port}" in steps[0]
    assert summary == "smoke: 4 passed, 4 failed"


async def test_smoke_plays_no_ipn_for_a_payment_a_real_provider_opened(
    start_ingest: StartIngest,
    start_payment: StartPayment,
    start_email: StartEmail,
    metrics_token: str,
) -> None:
    """Against NOWPayments, the IPN steps refuse, and webhook-ingest gets none."""
    async with SmtpServer() as smtp, FakeNowPayments() as nowpayments:
        email = await start_email(smtp_port=smtp.port)
        ingest = await start_ingest()
        payment = await start_payment(
            payment_provider="nowpayments",
            nowpayments_api_key=API_KEY,
            nowpayments_api_url=nowpayments.base_url,
        )
        settings = SmokeSettings(
            otp_url=f"http://127.0.0.1:{closed_port()}",
            email_url=email.url,
            payment_url=payment.url,
            webhook_ingest_url=ingest.url,
        )
        out = io.StringIO()

        code = await run_smoke(
            settings,
            token=metrics_token,
            ipn_secret=NOWPAYMENTS_SECRET,
            out=out,
            wait_seconds=10,
        )
        accepted = await scrape(ingest.url, metrics_token)

    steps = {line[6:22].strip(): line for line in out.getvalue().splitlines()[:-1]}
    assert code == 1
    assert steps["order and email"].startswith("PASS")
    for name in ("duplicate", "underpayment"):
        assert steps[name].startswith("FAIL"), steps[name]
        assert "opens payments at nowpayments" in steps[name]
    assert deliveries(accepted, "accepted") == 0

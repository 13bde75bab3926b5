"""`bitloot simulate payment`: signed IPNs through webhook-ingest move real orders."""

from __future__ import annotations

import asyncio
import io
from dataclasses import dataclass
from decimal import Decimal
from pathlib import Path
from typing import Any

import asyncpg
import pytest

from services.payment.simulator import SimulateSettings, simulate_payment
from shared import cli
from shared.service import RunningService
from tests.conftest import NOWPAYMENTS_SECRET, StartIngest, StartPayment
from tests.support.metrics import scrape_until, value
from tests.support.payments import get_order, place_order
from tests.support.webhooks import stored_deliveries


@dataclass(frozen=True)
class Services:
    ingest: RunningService
    payment: RunningService

    @property
    def settings(self) -> SimulateSettings:
        return SimulateSettings(
            payment_url=self.payment.url, webhook_ingest_url=self.ingest.url
        )


@pytest.fixture
async def services(start_ingest: StartIngest, start_payment: StartPayment) -> Services:
    return Services(await start_ingest(), await start_payment())


async def new_order(services: Services) -> dict[str, Any]:
    """A shopper's order for one gift card, paid in BTC through the simulator."""
    status, order = await place_order(services.payment.url)
    assert status == 201, order
    return order


async def simulate(
    services: Services,
    order_id: str,
    paid: Decimal | None = None,
    outcome: str = "pay",
    secret: str = NOWPAYMENTS_SECRET,
) -> tuple[int, list[str]]:
    """Run the simulation as the command does; its exit code and its lines."""
    out = io.StringIO()
    code = await simulate_payment(
        order_id,
        paid=paid,
        outcome=outcome,
        settings=services.settings,
        secret=secret,
        out=out,
    )
    return code, out.getvalue().splitlines()


async def current(services: Services, order_id: str) -> dict[str, Any]:
    status, order = await get_order(services.payment.url, order_id)
    assert status == 200, order
    return order


async def test_paying_too_little_leaves_the_order_underpaid_and_counted(
    services: Services, metrics_token: str
) -> None:
    """The order shows underpaid, and the underpaid counter moves once."""
    order = await new_order(services)
    order_id = order["order_id"]

    code, lines = await simulate(services, order_id, paid=Decimal("0.0001"))

    assert code == 0, lines
    assert lines[1:] == [
        "  confirming       accepted",
        "  partially_paid   accepted",
        f"order {order_id}: underpaid, payment partially_paid, "
        f"paid 0.0001 of {order['payment']['pay_amount']} BTC",
    ]
    shown = await current(services, order_id)
    assert shown["status"] == "underpaid"
    assert shown["payment"]["status"] == "partially_paid"
    samples = await scrape_until(
        services.payment.url,
        metrics_token,
        lambda s: value(s, "bitloot_underpaid_orders_total", asset="btc") > 0,
    )
    assert value(samples, "bitloot_underpaid_orders_total", asset="btc") == 1


async def test_paying_exactly_what_is_due_marks_the_order_paid(
    services: Services,
) -> None:
    """Four IPNs, from confirming to finished, and the order is paid."""
    order = await new_order(services)
    order_id = order["order_id"]

    code, lines = await simulate(services, order_id)

    assert code == 0, lines
    steps = [line.split() for line in lines[1:-1]]
    assert steps == [
        ["confirming", "accepted"],
        ["confirmed", "accepted"],
        ["sending", "accepted"],
        ["finished", "accepted"],
    ]
    shown = await current(services, order_id)
    assert shown["status"] == "paid"
    assert shown["payment"]["actually_paid"] == order["payment"]["pay_amount"]


async def test_an_expired_payment_expires_the_order(services: Services) -> None:
    """One expired IPN; nothing was paid."""
    order_id = (await new_order(services))["order_id"]

    code, lines = await simulate(services, order_id, outcome="expire")

    assert code == 0, lines
    shown = await current(services, order_id)
    assert shown["status"] == "expired"
    assert shown["payment"]["status"] == "expired"
    assert shown["payment"]["actually_paid"] == "0"


async def test_a_real_nowpayments_payment_is_never_faked(
    services: Services, database_url: str
) -> None:
    """The command refuses and webhook-ingest receives nothing."""
    order_id = (await new_order(services))["order_id"]
    connection = await asyncpg.connect(database_url)
    try:
        await connection.execute("UPDATE payment.payments SET provider = 'nowpayments'")
    finally:
        await connection.close()

    code, lines = await simulate(services, order_id)

    assert code == 2
    assert "paid through nowpayments" in lines[0]
    assert await stored_deliveries(database_url) == []
    assert (await current(services, order_id))["status"] == "awaiting_payment"


async def test_a_wrong_secret_stops_at_the_first_ipn_and_says_why(
    services: Services,
) -> None:
    """The operator learns the secrets differ; the order is untouched."""
    order_id = (await new_order(services))["order_id"]

    code, lines = await simulate(services, order_id, secret="not-the-ipn-secret")

    assert code == 2
    assert lines[1].split()[:2] == ["confirming", "401"]
    assert "BITLOOT_NOWPAYMENTS_IPN_SECRET" in lines[2]
    assert "not-the-ipn-secret" not in "\n".join(lines)
    assert (await current(services, order_id))["status"] == "awaiting_payment"


async def test_an_unknown_order_is_reported_as_missing(services: Services) -> None:
    """A typo in the order id is a one-line answer and exit code 1."""
    code, lines = await simulate(services, "6f1c2b9e-3d4a-4f7b-9a1e-2c3d4e5f6a7b")

    assert code == 1
    assert lines == [
        "no order '6f1c2b9e-3d4a-4f7b-9a1e-2c3d4e5f6a7b' at " + services.payment.url
    ]


async def test_the_command_line_plays_an_underpayment_step_by_step(
    services: Services,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    """`bitloot simulate payment ID --paid 0.0001` exits 0 with readable lines."""
    order = await new_order(services)
    order_id = order["order_id"]
    monkeypatch.setenv("BITLOOT_PAYMENT_URL", services.payment.url)
    monkeypatch.setenv("BITLOOT_WEBHOOK_INGEST_URL", services.ingest.url)
    monkeypatch.setenv("BITLOOT_NOWPAYMENTS_IPN_SECRET", NOWPAYMENTS_SECRET)

    # main runs its own event loop; this one keeps serving both services.
    code = await asyncio.to_thread(
        cli.main, ["simulate", "payment", order_id, "--paid", "0.0001"]
    )

    assert code == 0
    # The services log to stderr too, one JSON object a line.
    err = capsys.readouterr().err
    lines = [line for line in err.splitlines() if not line.startswith("{")]
    assert lines == [
        f"order {order_id}: sending 2 IPNs to "
        f"{services.ingest.url}/webhooks/nowpayments/ipn",
        "  confirming       accepted",
        "  partially_paid   accepted",
        f"order {order_id}: underpaid, payment partially_paid, "
        f"paid 0.0001 of {order['payment']['pay_amount']} BTC",
    ]
    assert "shopper@example.com" not in err
    assert NOWPAYMENTS_SECRET not in err


async def test_the_command_line_signs_with_the_secret_make_run_wrote(
    services: Services, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    """Without BITLOOT_NOWPAYMENTS_IPN_SECRET, .run/secrets/ supplies it."""
    order_id = (await new_order(services))["order_id"]
    secret_file = tmp_path / cli.DEV_IPN_SECRET
    secret_file.parent.mkdir(parents=True)
    secret_file.write_text(NOWPAYMENTS_SECRET + "\n")
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("BITLOOT_NOWPAYMENTS_IPN_SECRET", raising=False)
    monkeypatch.setenv("BITLOOT_PAYMENT_URL", services.payment.url)
    monkeypatch.setenv("BITLOOT_WEBHOOK_INGEST_URL", services.ingest.url)

    code = await asyncio.to_thread(
        cli.main, ["simulate", "payment", order_id, "--expire", "--wait", "10"]
    )

    assert code == 0
    assert (await current(services, order_id))["status"] == "expired"


def test_the_command_line_without_a_secret_says_how_to_set_one(
    monkeypatch: pytest.MonkeyPatch,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    """No traceback: the variable to set, the file make run writes, exit code 2."""
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("BITLOOT_NOWPAYMENTS_IPN_SECRET", raising=False)

    code = cli.main(["simulate", "payment", "6f1c2b9e-3d4a-4f7b-9a1e-2c3d4e5f6a7b"])

    assert code == 2
    err = capsys.readouterr().err
    assert "BITLOOT_NOWPAYMENTS_IPN_SECRET" in err
    assert str(cli.DEV_IPN_SECRET) in err

"""The whole system under a real Prometheus: smoke passes, every panel has data.

The four services register in Prometheus' discovery folder, ``bitloot smoke``
drives them, and then every query of every dashboard and every recording rule
is evaluated through Prometheus' HTTP API. A query that errors or comes back
empty is a panel an SRE would find blank, and fails the test.
"""

from __future__ import annotations

import io
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
import yaml

from grafana.generate import OVERVIEW_UID, panel_queries, resolve
from shared.smoke import SmokeSettings, run_smoke
from tests.conftest import (
    NOWPAYMENTS_SECRET,
    StartEmail,
    StartIngest,
    StartOtp,
    StartPayment,
)
from tests.support.prometheus import (
    REPOSITORY_CONFIG_DIR,
    Prometheus,
    PrometheusError,
    run_prometheus,
)
from tests.support.smtp_server import SmtpServer

pytestmark = pytest.mark.prometheus

SERVICES = {"otp", "email", "payment", "webhook-ingest"}
# Wide enough for rate() to see the smoke run's increases; the smoke run and
# the waits below fit in it.
RATE_WINDOW = "2m"


def recording_rules() -> list[str]:
    """The names every rule file in prometheus/rules records."""
    names = []
    for path in sorted((REPOSITORY_CONFIG_DIR / "rules").glob("*.yml")):
        for group in yaml.safe_load(path.read_text())["groups"]:
            names += [rule["record"] for rule in group["rules"] if "record" in rule]
    return names


@pytest.fixture
async def prometheus(tmp_path: Path, metrics_token: str) -> AsyncIterator[Prometheus]:
    async with run_prometheus(tmp_path / "prometheus", metrics_token) as running:
        yield running


async def services_up(prometheus: Prometheus) -> set[str]:
    """The services with at least one target Prometheus scraped successfully."""
    targets = await prometheus.targets()
    return {
        target["labels"]["service"]
        for target in targets
        if target["health"] == "up" and "service" in target["labels"]
    }


async def evaluate(prometheus: Prometheus, expr: str) -> list[dict[str, Any]] | str:
    """The query's result, or the error Prometheus gave for it."""
    try:
        return await prometheus.query(expr)
    except PrometheusError as error:
        return str(error)


async def test_smoke_passes_and_every_panel_and_recording_rule_shows_data(
    prometheus: Prometheus,
    start_otp: StartOtp,
    start_email: StartEmail,
    start_payment: StartPayment,
    start_ingest: StartIngest,
    metrics_token: str,
) -> None:
    """After one smoke run, nothing is blank, and each overview panel shows the run."""
    sd = {"sd_dir": prometheus.targets_dir}
    async with SmtpServer() as smtp:
        otp = await start_otp(**sd)
        email = await start_email(smtp_port=smtp.port, **sd)
        payment = await start_payment(**sd)
        ingest = await start_ingest(**sd)
        await prometheus.wait_for(
            lambda: services_up(prometheus), lambda up: up == SERVICES
        )

        # Drive every service once, as an SRE would after a deploy.
        out = io.StringIO()
        code = await run_smoke(
            SmokeSettings(
                otp_url=otp.url,
                email_url=email.url,
                payment_url=payment.url,
                webhook_ingest_url=ingest.url,
            ),
            token=metrics_token,
            ipn_secret=NOWPAYMENTS_SECRET,
            out=out,
            wait_seconds=15,
        )
        assert code == 0, out.getvalue()
        assert out.getvalue().splitlines()[-1] == "smoke: 8 passed, 0 failed"

        # rate() needs two samples of each target after the smoke run's counts.
        await prometheus.wait_for(
            lambda: prometheus.query("sum(bitloot_underpaid_orders_total)"),
            lambda result: bool(result) and float(result[0]["value"][1]) >= 1,
        )
        await prometheus.wait_for(
            lambda: prometheus.query(
                f'count_over_time(up{{job="bitloot"}}[{RATE_WINDOW}]) >= 3'
            ),
            lambda result: len(result) == len(SERVICES),
        )

        # Evaluate every panel's queries; the overview's must show the smoke run.
        blank = []
        moved: dict[str, bool] = {}
        for uid, title, expr in panel_queries():
            result = await evaluate(prometheus, resolve(expr, RATE_WINDOW))
            if not isinstance(result, list) or not result:
                blank.append(f"{uid} / {title}: {expr} -> {result or 'empty'}")
            elif uid == OVERVIEW_UID:
                positive = any(float(sample["value"][1]) > 0 for sample in result)
                moved[title] = moved.get(title, False) or positive

        # Every recorded series exists once its rule has been evaluated.
        for name in recording_rules():
            try:
                await prometheus.wait_for(
                    lambda name=name: prometheus.query(name), bool, timeout=10
                )
            except AssertionError:
                blank.append(f"recording rule {name} -> empty")

    assert not blank, "\n".join(blank)
    assert len(moved) == 4
    assert all(moved.values()), moved

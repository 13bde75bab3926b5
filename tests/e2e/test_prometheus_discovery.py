"""The repository's Prometheus config finds, authenticates and scrapes instances."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from shared.auth import TokenIssuer
from shared.service import RunningService
from tests.conftest import NOWPAYMENTS_SECRET, StartIngest
from tests.support.ipn import ipn_body, signed_headers
from tests.support.prometheus import (
    Prometheus,
    check_config,
    lay_out,
    run_prometheus,
    write_token,
)

pytestmark = pytest.mark.prometheus

Targets = list[dict[str, Any]]


@pytest.fixture
async def prometheus(tmp_path: Path, metrics_token: str) -> AsyncIterator[Prometheus]:
    async with run_prometheus(tmp_path / "prometheus", metrics_token) as running:
        yield running


def instance_of(service: RunningService) -> str:
    return f"{service.host}:{service.port}"


def target_of(targets: Targets, service: RunningService) -> dict[str, Any] | None:
    instance = instance_of(service)
    for target in targets:
        if target["labels"].get("instance") == instance:
            return target
    return None


async def wait_until_scraped(
    prometheus: Prometheus, service: RunningService, health: str
) -> dict[str, Any]:
    """The service's target once a scrape has given it ``health``."""

    def scraped(targets: Targets) -> bool:
        target = target_of(targets, service)
        return target is not None and target["health"] == health

    targets = await prometheus.wait_for(prometheus.targets, scraped)
    target = target_of(targets, service)
    assert target is not None
    return target


def test_promtool_accepts_the_repository_config(tmp_path: Path) -> None:
    """promtool checks the config laid out as deployed: token, targets, rules."""
    config = lay_out(tmp_path / "prometheus", "any-token")

    result = check_config(config)

    assert result.returncode == 0, result.stdout + result.stderr
    assert "SUCCESS" in result.stdout + result.stderr


async def test_prometheus_discovers_an_ingest_instance_and_reads_its_counters(
    prometheus: Prometheus, start_ingest: StartIngest
) -> None:
    """The instance's SD file is enough for Prometheus to scrape it with the token.

    After three signed IPNs, one of them sent again, and two with a bad
    signature, PromQL returns exactly those counts.
    """
    service = await start_ingest(sd_dir=prometheus.targets_dir)

    target = await wait_until_scraped(prometheus, service, "up")
    assert target["labels"]["service"] == "webhook-ingest"
    assert target["labels"]["job"] == "bitloot"
    assert target["labels"]["env"] == service.runtime.settings.environment
    assert target["scrapeUrl"] == f"{service.url}/metrics"

    url = f"{service.url}/webhooks/nowpayments/ipn"
    bodies = [ipn_body(payment_id=payment_id) for payment_id in (701, 702, 703)]
    async with aiohttp.ClientSession() as session:
        for payment_id in (801, 802):
            body = ipn_body(payment_id=payment_id)
            headers = signed_headers("not-the-secret", body)
            async with session.post(url, data=body, headers=headers) as response:
                assert response.status == 401
        for body in [*bodies, bodies[0]]:
            headers = signed_headers(NOWPAYMENTS_SECRET, body)
            async with session.post(url, data=body, headers=headers) as response:
                assert response.status == 200

    selector = f'service="webhook-ingest",instance="{instance_of(service)}"'
    queries = {
        "invalid": "bitloot_invalid_hmac_count_total"
        f'{{{selector},provider="nowpayments",reason="verification_failed"}}',
        "duplicate": "bitloot_duplicate_webhook_count_total"
        f'{{{selector},provider="nowpayments"}}',
        "accepted": "bitloot_webhook_deliveries_total"
        f'{{{selector},provider="nowpayments",outcome="accepted"}}',
    }
    expected = {"invalid": 2.0, "duplicate": 1.0, "accepted": 3.0}

    async def counters() -> dict[str, float | None]:
        values: dict[str, float | None] = {}
        for name, promql in queries.items():
            result = await prometheus.query(promql)
            assert len(result) <= 1, result
            values[name] = float(result[0]["value"][1]) if result else None
        return values

    # Counters only grow, so once each reaches its count a scrape has seen
    # every request; equality then also rules out counting too much.
    def caught_up(values: dict[str, float | None]) -> bool:
        return all((values[name] or 0) >= count for name, count in expected.items())

    assert await prometheus.wait_for(counters, caught_up) == expected


async def test_a_stopped_instance_leaves_discovery_and_prometheus_drops_it(
    prometheus: Prometheus, start_ingest: StartIngest
) -> None:
    """Graceful shutdown removes the SD file, and the target leaves Prometheus."""
    service = await start_ingest(sd_dir=prometheus.targets_dir)
    await wait_until_scraped(prometheus, service, "up")
    assert service.sd_file is not None
    assert service.sd_file.parent == prometheus.targets_dir

    await service.stop()

    assert not service.sd_file.exists()
    await prometheus.wait_for(
        prometheus.targets, lambda targets: target_of(targets, service) is None
    )


async def test_a_wrong_token_makes_the_target_unhealthy_with_a_401(
    prometheus: Prometheus,
    start_ingest: StartIngest,
    token_issuer: TokenIssuer,
    metrics_token: str,
) -> None:
    """Prometheus sends the token file's content; rotating the file mends it."""
    wrong = token_issuer.mint("tests", ["orders:read"], 3600)
    write_token(prometheus.directory, wrong)
    service = await start_ingest(sd_dir=prometheus.targets_dir)

    target = await wait_until_scraped(prometheus, service, "down")
    assert "401" in target["lastError"]

    write_token(prometheus.directory, metrics_token)
    target = await wait_until_scraped(prometheus, service, "up")
    assert target["lastError"] == ""

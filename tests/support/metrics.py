"""Reading a service's /metrics the way Prometheus does."""

from __future__ import annotations

import asyncio
from collections.abc import Callable

import aiohttp
from prometheus_client.parser import text_string_to_metric_families

Samples = dict[tuple[str, frozenset[tuple[str, str]]], float]


async def scrape(url: str, token: str) -> Samples:
    async with (
        aiohttp.ClientSession() as session,
        session.get(
            f"{url}/metrics", headers={"Authorization": f"Bearer {token}"}
        ) as response,
    ):
        assert response.status == 200, await response.text()
        text = await response.text()
    samples: Samples = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            samples[(sample.name, frozenset(sample.labels.items()))] = sample.value
    return samples


def value(samples: Samples, name: str, **labels: str) -> float:
    """One series' value; a missing series is an assertion failure, not zero."""
    key = (name, frozenset(labels.items()))
    assert key in samples, f"no series {name}{labels} in /metrics"
    return samples[key]


async def scrape_until(
    url: str,
    token: str,
    condition: Callable[[Samples], bool],
    timeout: float = 10.0,
) -> Samples:
    """Scrape until ``condition`` holds, for counters that move after a commit."""
    async with asyncio.timeout(timeout):
        while True:
            samples = await scrape(url, token)
            if condition(samples):
                return samples
            await asyncio.sleep(0.05)

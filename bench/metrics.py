"""Reading webhook-ingest's own /metrics, with a token the bench mints itself."""

from __future__ import annotations

import urllib.request
from dataclasses import dataclass
from pathlib import Path

from prometheus_client.parser import text_string_to_metric_families

from shared.auth import METRICS_SCOPE, TokenIssuer, generate_key_pair, load_private_key

SampleKey = tuple[str, frozenset[tuple[str, str]]]


def metrics_token(
    key_dir: Path, issuer: str = "bitloot", audience: str = "bitloot"
) -> tuple[Path, str]:
    """A fresh key pair (the service gets the public file) and a metrics:read token."""
    private_path, public_path = generate_key_pair(key_dir)
    issuer_ = TokenIssuer(load_private_key(private_path), issuer, audience)
    return public_path, issuer_.mint("bench", [METRICS_SCOPE], ttl_seconds=3600)


@dataclass(frozen=True)
class Snapshot:
    samples: dict[SampleKey, float]

    def value(self, name: str, **labels: str) -> float:
        return self.samples.get((name, frozenset(labels.items())), 0.0)


def scrape(base_url: str, token: str) -> Snapshot:
    request = urllib.request.Request(
        f"{base_url}/metrics", headers={"Authorization": f"Bearer {token}"}
    )
    with urllib.request.urlopen(request, timeout=10) as response:
        text = response.read().decode()
    samples: dict[SampleKey, float] = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            key = (sample.name, frozenset(sample.labels.items()))
            samples[key] = float(sample.value)
    return Snapshot(samples)


@dataclass(frozen=True)
class IngestMetrics:
    """What the service's metrics say happened between two scrapes."""

    commits: int
    mean_batch: float
    published: int
    publish_retries: int


def between(before: Snapshot, after: Snapshot, event_type: str) -> IngestMetrics:
    def delta(name: str, **labels: str) -> float:
        return after.value(name, **labels) - before.value(name, **labels)

    commits = delta("bitloot_webhook_commit_batch_size_count")
    stored = delta("bitloot_webhook_commit_batch_size_sum")
    published = "bitloot_events_published_total"
    return IngestMetrics(
        commits=int(commits),
        mean_batch=stored / commits if commits else 0.0,
        published=int(delta(published, type=event_type, outcome="ok")),
        publish_retries=int(delta(published, type=event_type, outcome="retry")),
    )

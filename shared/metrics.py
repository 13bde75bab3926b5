"""The metric families every service exports, each on its own registry."""

from __future__ import annotations

from collections.abc import Iterable

from prometheus_client import (
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    disable_created_metrics,
)
from prometheus_client.gc_collector import GCCollector
from prometheus_client.platform_collector import PlatformCollector
from prometheus_client.process_collector import ProcessCollector

# The *_created series double every counter's output and no query here uses them.
disable_created_metrics()  # type: ignore[no-untyped-call]  # unannotated upstream

PUBLISH_OUTCOMES = ("ok", "retry")
CONSUME_OUTCOMES = ("ok", "retry", "dead_letter", "duplicate")
LATENCY_BUCKETS = (
    0.001,
    0.0025,
    0.005,
    0.01,
    0.025,
    0.05,
    0.1,
    0.25,
    0.5,
    1.0,
    2.5,
    5.0,
    10.0,
)


class ServiceMetrics:
    """HTTP, event, outbox and connection metrics shared by all services."""

    def __init__(self, service: str, registry: CollectorRegistry | None = None):
        self.registry = registry or CollectorRegistry(auto_describe=True)
        # The default collectors live on the global registry; each service
        # registry gets its own so that tests can run several in one process.
        ProcessCollector(registry=self.registry)
        PlatformCollector(registry=self.registry)
        GCCollector(registry=self.registry)
        r = self.registry

        self.build_info = Gauge(
            "bitloot_build_info",
            "Always 1; labels name the running service and version.",
            ["service", "version"],
            registry=r,
        )
        self.http_requests = Counter(
            "bitloot_http_requests_total",
            "HTTP requests answered, by route template, method and status.",
            ["route", "method", "status"],
            registry=r,
        )
        self.http_duration = Histogram(
            "bitloot_http_request_duration_seconds",
            "Time from receiving a request to answering it.",
            ["route", "method"],
            buckets=LATENCY_BUCKETS,
            registry=r,
        )
        self.events_published = Counter(
            "bitloot_events_published_total",
            "Outbox publishes by event type: ok (confirmed) or retry (failed).",
            ["type", "outcome"],
            registry=r,
        )
        self.events_consumed = Counter(
            "bitloot_events_consumed_total",
            "Events handled by consumers, by queue, event type and outcome.",
            ["queue", "type", "outcome"],
            registry=r,
        )
        self.event_handling = Histogram(
            "bitloot_event_handling_duration_seconds",
            "Time to handle one consumed event, commit included.",
            ["queue", "type"],
            buckets=LATENCY_BUCKETS,
            registry=r,
        )
        self.outbox_backlog = Gauge(
            "bitloot_outbox_backlog",
            "Outbox rows not yet confirmed by the broker.",
            registry=r,
        )
        self.outbox_oldest_age = Gauge(
            "bitloot_outbox_oldest_age_seconds",
            "Age of the oldest unpublished outbox row; 0 when empty.",
            registry=r,
        )
        self.broker_connected = Gauge(
            "bitloot_broker_connected",
            "1 while the RabbitMQ connection is open, else 0.",
            registry=r,
        )
        self.database_connected = Gauge(
            "bitloot_database_connected",
            "1 while the last PostgreSQL check succeeded, else 0.",
            registry=r,
        )
        self.build_info.labels(service=service, version=_version()).set(1)

    def prime_published(self, event_types: Iterable[str]) -> None:
        """Create the publish series at zero so rate() sees the first event."""
        for event_type in event_types:
            for outcome in PUBLISH_OUTCOMES:
                self.events_published.labels(type=event_type, outcome=outcome)

    def prime_consumed(self, queue: str, event_types: Iterable[str]) -> None:
        """Create the consume series of one queue at zero."""
        for event_type in event_types:
            self.event_handling.labels(queue=queue, type=event_type)
            for outcome in CONSUME_OUTCOMES:
                self.events_consumed.labels(
                    queue=queue, type=event_type, outcome=outcome
                )

    def prime_route(self, route: str, method: str, statuses: Iterable[int]) -> None:
        """Create one route's request series at zero for the usual statuses."""
        self.http_duration.labels(route=route, method=method)
        for status in statuses:
            self.http_requests.labels(route=route, method=method, status=str(status))


def _version() -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("bitloot")
    except PackageNotFoundError:
        return "unknown"

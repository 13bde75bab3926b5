"""Every BitLoot dashboard, built in code and written to ``grafana/dashboards/``.

``python -m grafana.generate`` (``make dashboards``) rewrites the JSON files that
Grafana's file provider loads; ``panel_queries()`` lists each panel's PromQL for
tests that evaluate it against a real Prometheus.
"""

from __future__ import annotations

import json
import re
import sys
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

from grafana_foundation_sdk.builders import dashboard as dashboard_builders
from grafana_foundation_sdk.cog.builder import Builder
from grafana_foundation_sdk.cog.encoder import JSONEncoder
from grafana_foundation_sdk.models import dashboard as model
from grafana_foundation_sdk.models import prometheus as prometheus_model

from grafana.panels import (
    ABOVE_ZERO,
    BLUE,
    DATASOURCE,
    GREEN,
    INSTANCE_VARIABLE,
    JOB,
    ORANGE,
    RANGE_WINDOW,
    RATE_WINDOW,
    RED,
    as_stacked_bars,
    count_in_range,
    fixed_color,
    per_minute,
    quantile_queries,
    query,
    row,
    selector,
    shades_of,
    stat_panel,
    state_panel,
    summed_rate,
    thresholds,
    timeseries_panel,
    with_threshold_lines,
)

DASHBOARDS_DIR = Path(__file__).resolve().parent / "dashboards"
OVERVIEW_UID = "bitloot-level4"
TAG = "bitloot"
WEBHOOK_WARNING = 5
WEBHOOK_CRITICAL = 10

Panel = Builder[model.Panel]


@dataclass(frozen=True)
class ServiceBoard:
    """One service's dashboard: what it shows beyond the panels all services share."""

    service: str
    business_row: str
    consumes: bool
    business: Callable[[str], list[Panel]]

    @property
    def uid(self) -> str:
        return f"bitloot-{self.service}"


# --- The overview -----------------------------------------------------------------


def overview() -> model.Dashboard:
    """The four panels an operator looks at first, one per business risk."""
    otp = selector("otp", per_instance=False)
    payment = selector("payment", per_instance=False)
    email = selector("email", per_instance=False)
    webhooks = selector("webhook-ingest", per_instance=False)

    otp_activity = stat_panel(
        "OTP activity and rate limiting",
        "Code requests refused by the rate limit and failed verifications in "
        "the time range shown, across all otp instances. Red as soon as either "
        "is above zero; the alerts count the last hour.",
        "short",
        [
            query(
                count_in_range("bitloot_otp_rate_limit_exceeded_total", otp),
                "rate-limit hits",
                "A",
            ),
            query(
                count_in_range("bitloot_otp_verification_failed_total", otp),
                "failed verifications",
                "B",
            ),
        ],
        width=12,
        height=8,
    ).thresholds(thresholds(GREEN, (ABOVE_ZERO, RED)))

    underpaid = timeseries_panel(
        "Payment processing: underpaid orders",
        "Orders marked underpaid a minute, by the asset paid in. An order counts "
        "once, however often its IPN arrives.",
        "opm",
        [
            query(
                per_minute("bitloot_underpaid_orders_total", payment, ["asset"]),
                "{{asset}}",
            )
        ],
    )

    email_delivery = (
        timeseries_panel(
            "Email delivery status",
            "Emails a provider accepted (greens) and emails given up on (reds), "
            "a minute, by email type.",
            "opm",
            [
                query(
                    per_minute("bitloot_email_send_success_total", email, ["type"]),
                    "{{type}} sent",
                    "A",
                ),
                query(
                    per_minute("bitloot_email_send_failed_total", email, ["type"]),
                    "{{type}} failed",
                    "B",
                ),
            ],
        )
        .override_by_query("A", [shades_of(GREEN)])
        .override_by_query("B", [shades_of(RED)])
    )

    webhook_security = (
        with_threshold_lines(
            as_stacked_bars(
                timeseries_panel(
                    "Webhook security",
                    "Webhooks refused for a bad or missing signature (red) and "
                    "deliveries already stored (blue), a minute, stacked. Dashed "
                    f"lines: warning at {WEBHOOK_WARNING}, critical at "
                    f"{WEBHOOK_CRITICAL} a minute.",
                    "opm",
                    [
                        query(
                            per_minute("bitloot_invalid_hmac_count_total", webhooks),
                            "invalid signatures",
                            "A",
                        ),
                        query(
                            per_minute(
                                "bitloot_duplicate_webhook_count_total", webhooks
                            ),
                            "duplicates",
                            "B",
                        ),
                    ],
                )
                # At least a minute a bar, however far the dashboard is zoomed in.
                .interval("1m")
            ),
            thresholds(GREEN, (WEBHOOK_WARNING, ORANGE), (WEBHOOK_CRITICAL, RED)),
        )
        .override_by_query("A", [fixed_color(RED)])
        .override_by_query("B", [fixed_color(BLUE)])
    )

    return _dashboard(
        OVERVIEW_UID,
        "BitLoot Level 4 Observability",
        "5s",
        [(None, [otp_activity, underpaid, email_delivery, webhook_security])],
        variables=(),
    )


# --- One dashboard per service ----------------------------------------------------


def service_dashboard(board: ServiceBoard) -> model.Dashboard:
    """RED by route, events and outbox, business counters, connections, process."""
    labels = selector(board.service)
    return _dashboard(
        board.uid,
        f"BitLoot / {board.service}",
        "30s",
        [
            ("Requests", _requests(board.service)),
            ("Events and outbox", _events(labels, board.consumes)),
            (board.business_row, board.business(labels)),
            ("Connections and process", _health(labels)),
        ],
        variables=(_instance_variable(board.service),),
    )


def _requests(service: str) -> list[Panel]:
    requests = "bitloot_http_requests_total"
    by_route = ["method", "route"]
    labels = selector(service)
    server_errors = selector(service, 'status=~"5.."')
    return [
        timeseries_panel(
            "Request rate by route",
            "Requests answered a second, by method and route template.",
            "reqps",
            [query(summed_rate(requests, labels, by_route), "{{method}} {{route}}")],
            width=8,
        ),
        timeseries_panel(
            "Error ratio (5xx) by route",
            "Share of each route's answers that were server errors.",
            "percentunit",
            [
                # A route with no 5xx series yet shows 0, not a gap.
                query(
                    f"({summed_rate(requests, server_errors, by_route)} "
                    f"or 0 * {summed_rate(requests, labels, by_route)}) "
                    f"/ {summed_rate(requests, labels, by_route)}",
                    "{{method}} {{route}}",
                )
            ],
            width=8,
        ),
        timeseries_panel(
            "Responses by status",
            "Answers a second, by HTTP status.",
            "reqps",
            [query(summed_rate(requests, labels, ["status"]), "{{status}}")],
            width=8,
        ),
        timeseries_panel(
            "Latency by route (p50, p95, p99)",
            "Time from receiving a request to answering it, from the histogram.",
            "s",
            quantile_queries(
                "bitloot_http_request_duration_seconds",
                labels,
                by_route,
                "{{method}} {{route}}",
            ),
            width=24,
            height=9,
            legend_table=True,
        ),
    ]


def _events(labels: str, consumes: bool) -> list[Panel]:
    width = 8 if consumes else 12
    published = timeseries_panel(
        "Events published by type and outcome",
        "Outbox publishes a second: ok once the broker confirmed, retry when it "
        "did not and the row stays for the next attempt.",
        "ops",
        [
            query(
                summed_rate(
                    "bitloot_events_published_total", labels, ["type", "outcome"]
                ),
                "{{type}} {{outcome}}",
            )
        ],
        width=width,
    )
    backlog = timeseries_panel(
        "Outbox backlog",
        "Outbox rows not yet confirmed by the broker. Every instance reports the "
        "same table, so this is the highest report.",
        "short",
        [query("max(bitloot_outbox_backlog" + labels + ")", "rows waiting")],
    )
    oldest = timeseries_panel(
        "Oldest unpublished outbox row",
        "Age of the oldest row still waiting for the broker; 0 when the outbox "
        "is empty. Growing means events are late.",
        "s",
        [query("max(bitloot_outbox_oldest_age_seconds" + labels + ")", "oldest")],
    )
    if not consumes:
        return [published, backlog.span(6), oldest.span(6)]

    consumed = timeseries_panel(
        "Events consumed by queue and outcome",
        "Events handled a second: ok, retry (handled again later), dead_letter "
        "(parked in <queue>.dlq) or duplicate (seen before, skipped).",
        "ops",
        [
            query(
                summed_rate(
                    "bitloot_events_consumed_total",
                    labels,
                    ["queue", "type", "outcome"],
                ),
                "{{queue}} {{type}} {{outcome}}",
            )
        ],
        width=width,
    )
    handling = timeseries_panel(
        "Event handling time by queue (p50, p95, p99)",
        "Time to handle one consumed event, its commit included.",
        "s",
        quantile_queries(
            "bitloot_event_handling_duration_seconds", labels, ["queue"], "{{queue}}"
        ),
        width=width,
    )
    return [published, consumed, handling, backlog, oldest]


def _health(labels: str) -> list[Panel]:
    return [
        state_panel(
            "Instances up",
            "Whether Prometheus' last scrape of each instance succeeded.",
            "up" + labels,
            "up",
            "down",
        ),
        state_panel(
            "Broker connection",
            "Whether each instance's RabbitMQ connection is open.",
            "bitloot_broker_connected" + labels,
            "connected",
            "disconnected",
        ),
        state_panel(
            "Database connection",
            "Whether each instance's last PostgreSQL check succeeded.",
            "bitloot_database_connected" + labels,
            "connected",
            "disconnected",
        ),
        timeseries_panel(
            "CPU",
            "CPU time each instance's process used a second (1 = one core).",
            "percentunit",
            [
                query(
                    f"rate(process_cpu_seconds_total{labels}[{RATE_WINDOW}])",
                    "{{instance}}",
                )
            ],
        ),
        timeseries_panel(
            "Memory",
            "Resident memory of each instance's process.",
            "bytes",
            [query("process_resident_memory_bytes" + labels, "{{instance}}")],
        ),
    ]


def _instance_variable(service: str) -> dashboard_builders.QueryVariable:
    """Every instance of the service, all selected at first; several may be."""
    values = f'label_values(up{{job="{JOB}", service="{service}"}}, instance)'
    return (
        dashboard_builders.QueryVariable(INSTANCE_VARIABLE)
        .label("Instance")
        .datasource(DATASOURCE)
        .query({"query": values, "refId": "instances"})
        .refresh(model.VariableRefresh.ON_TIME_RANGE_CHANGED)
        .sort(model.VariableSort.NATURAL_ASC)
        .multi(True)
        .include_all(True)
        .all_value(".*")
        .current(model.VariableOption(text="All", value="$__all"))
    )


# --- Business panels, one function a service --------------------------------------


def _otp_panels(labels: str) -> list[Panel]:
    return [
        timeseries_panel(
            "Rate-limit hits by operation",
            "Code requests refused because the address asked more than 3 times "
            "in 60 s, a minute.",
            "opm",
            [
                query(
                    per_minute(
                        "bitloot_otp_rate_limit_exceeded_total", labels, ["operation"]
                    ),
                    "{{operation}}",
                )
            ],
        ),
        timeseries_panel(
            "Failed verifications by reason",
            "Verifications refused a minute: invalid_code, expired or "
            "too_many_attempts.",
            "opm",
            [
                query(
                    per_minute(
                        "bitloot_otp_verification_failed_total", labels, ["reason"]
                    ),
                    "{{reason}}",
                )
            ],
        ),
    ]


def _email_panels(labels: str) -> list[Panel]:
    return [
        timeseries_panel(
            "Emails sent by type",
            "Emails a provider accepted, a minute.",
            "opm",
            [
                query(
                    per_minute("bitloot_email_send_success_total", labels, ["type"]),
                    "{{type}}",
                )
            ],
            width=8,
        ),
        timeseries_panel(
            "Emails failed by type and reason",
            "Emails given up on, a minute: refused, or every attempt failed.",
            "opm",
            [
                query(
                    per_minute(
                        "bitloot_email_send_failed_total", labels, ["type", "reason"]
                    ),
                    "{{type}} {{reason}}",
                )
            ],
            width=8,
        ),
        timeseries_panel(
            "Send retries by type and reason",
            "Failed attempts that will be tried again, a minute.",
            "opm",
            [
                query(
                    per_minute(
                        "bitloot_email_send_retries_total", labels, ["type", "reason"]
                    ),
                    "{{type}} {{reason}}",
                )
            ],
            width=8,
        ),
        timeseries_panel(
            "Email requests by type and outcome",
            "Events asking for an email, a minute: new facts, or duplicates that "
            "send nothing.",
            "opm",
            [
                query(
                    per_minute(
                        "bitloot_emails_requested_total", labels, ["type", "outcome"]
                    ),
                    "{{type}} {{outcome}}",
                )
            ],
            width=12,
        ),
        timeseries_panel(
            "Send attempt duration by provider (p50, p95, p99)",
            "Time one send attempt took.",
            "s",
            quantile_queries(
                "bitloot_email_send_duration_seconds",
                labels,
                ["provider"],
                "{{provider}}",
            ),
            width=12,
        ),
        timeseries_panel(
            "Emails waiting",
            "Emails not yet sent or given up on. Every instance reports the same "
            "table, so this is the highest report.",
            "short",
            [
                query("max(bitloot_email_queue_depth" + labels + ")", "waiting"),
            ],
            width=12,
        ),
        timeseries_panel(
            "Oldest waiting email",
            "Age of the oldest email not yet sent or given up on.",
            "s",
            [
                query(
                    "max(bitloot_email_oldest_waiting_age_seconds" + labels + ")",
                    "oldest",
                )
            ],
            width=12,
        ),
    ]


def _payment_panels(labels: str) -> list[Panel]:
    return [
        timeseries_panel(
            "Underpaid orders by asset",
            "Orders marked underpaid a minute, by the asset paid in.",
            "opm",
            [
                query(
                    per_minute("bitloot_underpaid_orders_total", labels, ["asset"]),
                    "{{asset}}",
                )
            ],
            width=8,
        ),
        timeseries_panel(
            "Payments reaching each status",
            "Payments that moved to each status, a minute.",
            "opm",
            [
                query(
                    per_minute("bitloot_payments_total", labels, ["status"]),
                    "{{status}}",
                )
            ],
            width=8,
        ),
        timeseries_panel(
            "NOWPayments IPNs by outcome",
            "IPNs handled a minute: applied, unchanged, stale, deposit or "
            "unknown_payment.",
            "opm",
            [
                query(
                    per_minute("bitloot_payment_ipns_total", labels, ["outcome"]),
                    "{{outcome}}",
                )
            ],
            width=8,
        ),
        timeseries_panel(
            "Kinguin order updates by outcome",
            "Kinguin webhooks handled a minute, by what they did to an order.",
            "opm",
            [
                query(
                    per_minute(
                        "bitloot_kinguin_order_updates_total", labels, ["outcome"]
                    ),
                    "{{outcome}}",
                )
            ],
            width=8,
        ),
        timeseries_panel(
            "Provider requests by outcome",
            "Attempts to open a payment at the provider, a minute.",
            "opm",
            [
                query(
                    per_minute(
                        "bitloot_payment_provider_requests_total",
                        labels,
                        ["provider", "outcome"],
                    ),
                    "{{provider}} {{outcome}}",
                )
            ],
            width=8,
        ),
        timeseries_panel(
            "Provider latency (p50, p95, p99)",
            "Time to open a payment at the provider, retries included.",
            "s",
            quantile_queries(
                "bitloot_payment_provider_duration_seconds",
                labels,
                ["provider"],
                "{{provider}}",
            ),
            width=8,
        ),
    ]


def _webhook_ingest_panels(labels: str) -> list[Panel]:
    return [
        timeseries_panel(
            "Deliveries by provider and outcome",
            "Webhook deliveries answered a minute.",
            "opm",
            [
                query(
                    per_minute(
                        "bitloot_webhook_deliveries_total",
                        labels,
                        ["provider", "outcome"],
                    ),
                    "{{provider}} {{outcome}}",
                )
            ],
        ),
        timeseries_panel(
            "Invalid signatures by provider and reason",
            "Webhooks refused a minute: verification_failed, missing_secret "
            "(the provider's secret is not configured) or exception.",
            "opm",
            [
                query(
                    per_minute(
                        "bitloot_invalid_hmac_count_total",
                        labels,
                        ["provider", "reason"],
                    ),
                    "{{provider}} {{reason}}",
                )
            ],
        ),
        timeseries_panel(
            "Duplicate deliveries by provider",
            "Deliveries of a provider event already stored, a minute.",
            "opm",
            [
                query(
                    per_minute(
                        "bitloot_duplicate_webhook_count_total", labels, ["provider"]
                    ),
                    "{{provider}}",
                )
            ],
        ),
        timeseries_panel(
            "Deliveries per database commit (p50, p95, p99)",
            "How many deliveries were stored together in one commit.",
            "short",
            quantile_queries("bitloot_webhook_commit_batch_size", labels, [], ""),
        ),
    ]


SERVICES = (
    ServiceBoard("otp", "One-time codes", consumes=False, business=_otp_panels),
    ServiceBoard("email", "Emails", consumes=True, business=_email_panels),
    ServiceBoard(
        "payment", "Orders and payments", consumes=True, business=_payment_panels
    ),
    ServiceBoard(
        "webhook-ingest", "Webhooks", consumes=False, business=_webhook_ingest_panels
    ),
)


# --- Assembly, output, queries ------------------------------------------------------


def _dashboard(
    uid: str,
    title: str,
    refresh: str,
    sections: Sequence[tuple[str | None, Sequence[Panel]]],
    variables: Sequence[Builder[model.VariableModel]],
) -> model.Dashboard:
    """A dashboard of sections, each a row title (or none) and its panels."""
    builder = (
        dashboard_builders.Dashboard(title)
        .uid(uid)
        .tags([TAG])
        .refresh(refresh)
        .time("now-1h", "now")
        .timezone("browser")
        .tooltip(model.DashboardCursorSync.CROSSHAIR)
        # The code is the source: edits made in Grafana would be lost anyway.
        .readonly()
        .link(
            dashboard_builders.DashboardLink("BitLoot dashboards")
            .type(model.DashboardLinkType.DASHBOARDS)
            .tags([TAG])
            .as_dropdown(True)
            .keep_time(True)
        )
    )
    for variable in variables:
        builder.with_variable(variable)
    for title_of_row, panels in sections:
        # A row left open only heads the panels that follow it.
        if title_of_row is not None:
            builder.with_row(row(title_of_row))
        for panel in panels:
            builder.with_panel(panel)
    built = builder.build()
    # Grafana wants a unique id a panel, stable across runs to keep diffs small.
    for number, item in enumerate(built.panels or [], start=1):
        item.id_val = number
    return built


def dashboards() -> list[model.Dashboard]:
    """The overview first, then one dashboard per service."""
    return [overview(), *(service_dashboard(board) for board in SERVICES)]


def render(dashboard: model.Dashboard) -> str:
    """The JSON Grafana's file provider reads, stable from one run to the next."""
    return json.dumps(dashboard, cls=JSONEncoder, indent=2, sort_keys=True) + "\n"


def rendered() -> dict[str, str]:
    """Every dashboard's file name and its JSON."""
    return {f"{board.uid}.json": render(board) for board in dashboards()}


def panel_queries() -> list[tuple[str, str, str]]:
    """(dashboard uid, panel title, PromQL) of every query of every panel."""
    return [
        (board.uid or "", panel.title or "", target.expr)
        for board in dashboards()
        for panel in _panels(board)
        for target in panel.targets or []
        if isinstance(target, prometheus_model.Dataquery)
    ]


def resolve(expr: str, rate_interval: str = "1m", range_window: str = "1h") -> str:
    """The query as Prometheus can run it: Grafana's variables filled in.

    ``$__rate_interval`` becomes ``rate_interval`` and ``$__range`` becomes
    ``range_window``; a template variable becomes ``.*``, its "All" value,
    which every query matches with ``=~``.
    """
    expr = expr.replace(RATE_WINDOW, rate_interval).replace(RANGE_WINDOW, range_window)
    return re.sub(r"\$\{?\w+\}?", ".*", expr)


def _panels(board: model.Dashboard) -> Iterator[model.Panel]:
    for item in board.panels or []:
        if isinstance(item, model.RowPanel):
            yield from item.panels
        else:
            yield item


def write(directory: Path = DASHBOARDS_DIR) -> list[Path]:
    """Write every dashboard; remove files of dashboards that no longer exist."""
    directory.mkdir(parents=True, exist_ok=True)
    files = rendered()
    for stale in directory.glob("*.json"):
        if stale.name not in files:
            stale.unlink()
    written = []
    for name, text in files.items():
        path = directory / name
        path.write_text(text)
        written.append(path)
    return written


def main() -> int:
    for path in write():
        print(f"wrote {path}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

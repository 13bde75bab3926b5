"""The dashboards Grafana loads are the ones the code builds, and they say what
the design asks of them."""

from __future__ import annotations

import json
import re
import subprocess
from pathlib import Path
from typing import Any

import pytest

from grafana.generate import (
    DASHBOARDS_DIR,
    OVERVIEW_UID,
    SERVICES,
    panel_queries,
    rendered,
    resolve,
)
from grafana.panels import DATASOURCE_UID, RATE_WINDOW
from tests.support.prometheus import find_tool

SERVICE_UIDS = {
    "bitloot-otp": "otp",
    "bitloot-email": "email",
    "bitloot-payment": "payment",
    "bitloot-webhook-ingest": "webhook-ingest",
}


def _load(uid: str) -> dict[str, Any]:
    loaded: dict[str, Any] = json.loads((DASHBOARDS_DIR / f"{uid}.json").read_text())
    return loaded


def _all_dashboards() -> list[dict[str, Any]]:
    return [
        json.loads(path.read_text()) for path in sorted(DASHBOARDS_DIR.glob("*.json"))
    ]


def _panels(dashboard: dict[str, Any]) -> list[dict[str, Any]]:
    """Every panel that shows data, rows left out."""
    return [panel for panel in dashboard["panels"] if panel["type"] != "row"]


def _overview_panel(title_start: str) -> dict[str, Any]:
    matching = [
        panel
        for panel in _panels(_load(OVERVIEW_UID))
        if panel["title"].startswith(title_start)
    ]
    assert len(matching) == 1, f"one overview panel titled {title_start!r}…"
    return matching[0]


def _steps(panel: dict[str, Any]) -> list[tuple[float | None, str]]:
    steps = panel["fieldConfig"]["defaults"]["thresholds"]["steps"]
    return [(step["value"], step["color"]) for step in steps]


def _override_colors(panel: dict[str, Any]) -> dict[str, dict[str, str]]:
    """The colour each query's series get, by refId."""
    colors = {}
    for override in panel["fieldConfig"]["overrides"]:
        assert override["matcher"]["id"] == "byFrameRefID"
        for prop in override["properties"]:
            if prop["id"] == "color":
                colors[override["matcher"]["options"]] = prop["value"]
    return colors


def _legend_of(panel: dict[str, Any], ref_id: str) -> str:
    (target,) = [t for t in panel["targets"] if t["refId"] == ref_id]
    legend: str = target["legendFormat"]
    return legend


def test_the_checked_in_dashboards_are_what_the_code_generates() -> None:
    """Editing the JSON by hand, or the code without regenerating, is caught."""
    expected = rendered()
    on_disk = {path.name: path.read_text() for path in DASHBOARDS_DIR.glob("*.json")}

    assert sorted(on_disk) == sorted(expected), "run `make dashboards`"
    for name, text in expected.items():
        assert on_disk[name] == text, f"{name} is out of date: run `make dashboards`"


def test_the_overview_is_the_level_4_dashboard_refreshing_every_5_seconds() -> None:
    """Its uid and title are what links and bookmarks rely on."""
    overview = _load(OVERVIEW_UID)

    assert overview["uid"] == "bitloot-level4"
    assert overview["title"] == "BitLoot Level 4 Observability"
    assert overview["refresh"] == "5s"


def test_the_overview_has_exactly_the_four_panels_of_the_design() -> None:
    """OTP as a stat, then payments, email and webhooks as time series."""
    panels = _panels(_load(OVERVIEW_UID))

    assert [(panel["type"], panel["title"]) for panel in panels] == [
        ("stat", "OTP activity and rate limiting"),
        ("timeseries", "Payment processing: underpaid orders"),
        ("timeseries", "Email delivery status"),
        ("timeseries", "Webhook security"),
    ]
    assert len(_load(OVERVIEW_UID)["panels"]) == 4, "no rows on the overview"


def test_otp_activity_counts_both_metrics_and_turns_red_above_zero() -> None:
    """Any rate-limit hit or failed verification colours the stat red."""
    panel = _overview_panel("OTP activity")
    exprs = [target["expr"] for target in panel["targets"]]

    assert any("bitloot_otp_rate_limit_exceeded_total" in e for e in exprs)
    assert any("bitloot_otp_verification_failed_total" in e for e in exprs)
    (base, above_zero) = _steps(panel)
    assert base == (None, "green")
    assert above_zero[1] == "red"
    assert above_zero[0] is not None and 0 < above_zero[0] < 0.001


def test_underpaid_orders_are_shown_by_asset_with_a_legend() -> None:
    """One series an asset, named in the legend."""
    panel = _overview_panel("Payment processing")
    (target,) = panel["targets"]

    assert "bitloot_underpaid_orders_total" in target["expr"]
    assert "by (asset)" in target["expr"]
    assert target["legendFormat"] == "{{asset}}"
    assert panel["options"]["legend"]["showLegend"] is True


def test_email_successes_are_green_and_failures_red_by_type() -> None:
    """The colour follows the query, so every type keeps it."""
    panel = _overview_panel("Email delivery")
    colors = _override_colors(panel)
    by_metric = {target["refId"]: target["expr"] for target in panel["targets"]}

    success = next(r for r, e in by_metric.items() if "send_success_total" in e)
    failure = next(r for r, e in by_metric.items() if "send_failed_total" in e)
    assert colors[success]["fixedColor"] == "green"
    assert colors[failure]["fixedColor"] == "red"
    assert all("by (type)" in expr for expr in by_metric.values())
    assert "{{type}}" in _legend_of(panel, success)


def test_webhook_security_stacks_red_and_blue_bars_with_thresholds_5_and_10() -> None:
    """Invalid signatures in red, duplicates in blue, per minute, stacked."""
    panel = _overview_panel("Webhook security")
    custom = panel["fieldConfig"]["defaults"]["custom"]
    colors = _override_colors(panel)
    by_metric = {target["refId"]: target["expr"] for target in panel["targets"]}

    assert custom["drawStyle"] == "bars"
    assert custom["stacking"]["mode"] == "normal"
    assert custom["thresholdsStyle"]["mode"] != "off"
    assert [value for value, _ in _steps(panel)] == [None, 5, 10]
    assert _steps(panel)[1:] == [(5, "orange"), (10, "red")]
    invalid = next(r for r, e in by_metric.items() if "invalid_hmac" in e)
    duplicates = next(r for r, e in by_metric.items() if "duplicate_webhook" in e)
    assert colors[invalid] == {"mode": "fixed", "fixedColor": "red"}
    assert colors[duplicates] == {"mode": "fixed", "fixedColor": "blue"}
    assert all(expr.startswith("60 * ") for expr in by_metric.values())
    assert panel["fieldConfig"]["defaults"]["unit"] == "opm"


def test_every_service_has_its_own_dashboard_with_an_instance_choice() -> None:
    """otp, email, payment and webhook-ingest, each filterable by instance."""
    assert {board.uid for board in SERVICES} == set(SERVICE_UIDS)
    for uid in SERVICE_UIDS:
        variables = _load(uid)["templating"]["list"]
        assert [variable["name"] for variable in variables] == ["instance"]
        assert variables[0]["includeAll"] is True
        assert variables[0]["allValue"] == ".*"


def test_each_service_dashboard_covers_red_events_outbox_and_the_process() -> None:
    """Requests, errors, latency, events, outbox, connections, CPU and memory."""
    needed = (
        "bitloot_http_requests_total",
        'status=~"5.."',
        "histogram_quantile(0.99, sum by (method, route, le)",
        "bitloot_events_published_total",
        "bitloot_outbox_backlog",
        "bitloot_outbox_oldest_age_seconds",
        "bitloot_broker_connected",
        "bitloot_database_connected",
        "process_cpu_seconds_total",
        "process_resident_memory_bytes",
    )
    for uid in SERVICE_UIDS:
        exprs = " ".join(expr for board, _, expr in panel_queries() if board == uid)
        missing = [fragment for fragment in needed if fragment not in exprs]
        assert not missing, f"{uid} lacks {missing}"


def test_each_service_dashboard_shows_its_business_counters() -> None:
    """The metrics of the design, each on its own service's dashboard."""
    business = {
        "bitloot-otp": (
            "bitloot_otp_rate_limit_exceeded_total",
            "bitloot_otp_verification_failed_total",
        ),
        "bitloot-email": (
            "bitloot_email_send_success_total",
            "bitloot_email_send_failed_total",
        ),
        "bitloot-payment": ("bitloot_underpaid_orders_total",),
        "bitloot-webhook-ingest": (
            "bitloot_invalid_hmac_count_total",
            "bitloot_duplicate_webhook_count_total",
        ),
    }
    for uid, metrics in business.items():
        exprs = " ".join(expr for board, _, expr in panel_queries() if board == uid)
        assert all(metric in exprs for metric in metrics), uid


def test_every_query_selects_the_job_and_its_service() -> None:
    """Series come from file discovery's labels, never from another service."""
    for uid, title, expr in panel_queries():
        selectors = re.findall(r"\{([^}]*)\}", expr)
        assert selectors, f"{uid} / {title}: no label selector in {expr}"
        for labels in selectors:
            assert 'job="bitloot"' in labels, f"{uid} / {title}: {expr}"
            if uid in SERVICE_UIDS:
                assert f'service="{SERVICE_UIDS[uid]}"' in labels, expr
                assert 'instance=~"$instance"' in labels, expr
            else:
                assert re.search(r'service="[a-z-]+"', labels), expr


def test_every_target_uses_the_provisioned_datasource() -> None:
    """Dashboards never fall back to whatever Grafana's default datasource is."""
    for dashboard in _all_dashboards():
        for panel in _panels(dashboard):
            assert panel["datasource"]["uid"] == DATASOURCE_UID, panel["title"]
            assert panel["targets"], f"{panel['title']} has no query"
            for target in panel["targets"]:
                assert target["datasource"] == {
                    "type": "prometheus",
                    "uid": DATASOURCE_UID,
                }, panel["title"]
        for variable in dashboard.get("templating", {}).get("list", []):
            assert variable["datasource"]["uid"] == DATASOURCE_UID


def test_every_rate_window_is_the_rate_interval_and_counts_use_the_range() -> None:
    """Grafana keeps $__rate_interval at four scrapes or more at any zoom.

    A stat that counts, like the overview's OTP panel, counts over the range
    shown, so it stays red as long as the hits are in view.
    """
    for dashboard in _all_dashboards():
        for panel in _panels(dashboard):
            for target in panel["targets"]:
                expr = target["expr"]
                calls = re.findall(r"\b(?:rate|irate|increase)\(", expr)
                windows = re.findall(r"\[([^\]]*)\]", expr)
                assert len(windows) == len(calls), expr
                allowed = {"$__range"} if panel["type"] == "stat" else {RATE_WINDOW}
                assert set(windows) <= allowed, expr


def test_panel_ids_are_unique_within_each_dashboard() -> None:
    """Grafana addresses panels by id in links and when editing."""
    for dashboard in _all_dashboards():
        ids = [panel["id"] for panel in dashboard["panels"]]
        assert len(ids) == len(set(ids)), dashboard["uid"]


def test_panel_queries_lists_every_target_of_every_dashboard() -> None:
    """One entry a query, named by dashboard uid and panel title."""
    expected = [
        (dashboard["uid"], panel["title"], target["expr"])
        for dashboard in _all_dashboards()
        for panel in _panels(dashboard)
        for target in panel["targets"]
    ]

    assert sorted(panel_queries()) == sorted(expected)
    assert (
        OVERVIEW_UID,
        "Webhook security",
        "60 * sum(rate(bitloot_invalid_hmac_count_total"
        '{job="bitloot", service="webhook-ingest"}[$__rate_interval]))',
    ) in panel_queries()


def test_resolving_a_query_fills_in_every_grafana_variable() -> None:
    """What is left is plain PromQL that Prometheus' HTTP API accepts."""
    expr = 'sum(rate(x{instance=~"$instance", pod=~"${pod}"}[$__rate_interval]))'

    assert resolve(expr) == 'sum(rate(x{instance=~".*", pod=~".*"}[1m]))'
    assert resolve(expr, "5m").endswith("[5m]))")
    for _, _, query in panel_queries():
        assert "$" not in resolve(query)


@pytest.mark.prometheus
def test_every_resolved_query_parses_as_promql(tmp_path: Path) -> None:
    """promtool checks each query as a recording rule's expression."""
    promtool = find_tool("promtool")
    rules = [
        {"record": f"dashboard:query_{index}", "expr": resolve(expr)}
        for index, (_, _, expr) in enumerate(panel_queries())
    ]
    rule_file = tmp_path / "dashboards.rules.json"
    # JSON is YAML, so promtool reads it without a YAML writer here.
    rule_file.write_text(json.dumps({"groups": [{"name": "q", "rules": rules}]}))

    result = subprocess.run(
        [promtool, "check", "rules", str(rule_file)],
        capture_output=True,
        text=True,
        check=False,
    )

    assert result.returncode == 0, result.stdout + result.stderr

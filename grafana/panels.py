"""Queries and panels shared by every BitLoot dashboard.

Thin typed helpers over Grafana's foundation SDK, so that each dashboard reads
as a list of panels and their PromQL while the datasource, the label
selectors, units and colours are decided here once.
"""

from __future__ import annotations

from collections.abc import Sequence

from grafana_foundation_sdk.builders import common as common_builders
from grafana_foundation_sdk.builders import dashboard as dashboard_builders
from grafana_foundation_sdk.builders import prometheus, stat, timeseries
from grafana_foundation_sdk.models import common
from grafana_foundation_sdk.models import dashboard as model

# Provisioned with this uid (grafana/provisioning/datasources/), so dashboards
# never depend on a datasource name or on Grafana's default one.
DATASOURCE_UID = "bitloot-prometheus"
DATASOURCE = model.DataSourceRef(type_val="prometheus", uid=DATASOURCE_UID)
JOB = "bitloot"
# Grafana widens it to at least four scrape intervals, so rate() always has
# two samples however far the dashboard is zoomed in.
RATE_WINDOW = "$__rate_interval"
# The time range the dashboard shows: for counts, "how many in this view".
RANGE_WINDOW = "$__range"
INSTANCE_VARIABLE = "instance"
QUANTILES = (0.5, 0.95, 0.99)
REF_IDS = "ABCDEFGHIJ"

GREEN = "green"
RED = "red"
BLUE = "blue"
ORANGE = "orange"
# Counters only ever add whole events, so any rate above this is a real one.
ABOVE_ZERO = 1e-6


def selector(service: str, *extra: str, per_instance: bool = True) -> str:
    """Label matchers of one service's series, as file-based discovery labels them."""
    matchers = [f'job="{JOB}"', f'service="{service}"']
    if per_instance:
        matchers.append(f'instance=~"${INSTANCE_VARIABLE}"')
    return "{" + ", ".join([*matchers, *extra]) + "}"


def rate(metric: str, labels: str) -> str:
    return f"rate({metric}{labels}[{RATE_WINDOW}])"


def summed_rate(metric: str, labels: str, by: Sequence[str] = ()) -> str:
    """Per-second rate of a counter, summed over instances (and other labels)."""
    aggregation = f"sum by ({', '.join(by)}) " if by else "sum"
    return f"{aggregation}({rate(metric, labels)})"


def per_minute(metric: str, labels: str, by: Sequence[str] = ()) -> str:
    """Events a minute: business counters are too sparse to read per second."""
    return f"60 * {summed_rate(metric, labels, by)}"


def count_in_range(metric: str, labels: str) -> str:
    """How many a counter counted in the dashboard's time range, all instances."""
    return f"sum(increase({metric}{labels}[{RANGE_WINDOW}]))"


def quantile(q: float, histogram: str, labels: str, by: Sequence[str] = ()) -> str:
    """The q-quantile of a histogram over every instance, per group."""
    buckets = rate(f"{histogram}_bucket", labels)
    return f"histogram_quantile({q}, sum by ({', '.join([*by, 'le'])}) ({buckets}))"


def query(expr: str, legend: str, ref_id: str = "A") -> prometheus.Dataquery:
    """A range query against the provisioned Prometheus."""
    return (
        prometheus.Dataquery()
        .datasource(DATASOURCE)
        .expr(expr)
        .legend_format(legend)
        .ref_id(ref_id)
        .range()
    )


def quantile_queries(
    histogram: str, labels: str, by: Sequence[str], legend: str
) -> list[prometheus.Dataquery]:
    """p50, p95 and p99 of a histogram, one query each, legends prefixed pNN."""
    return [
        query(
            quantile(q, histogram, labels, by),
            f"p{round(q * 100)} {legend}".strip(),
            REF_IDS[index],
        )
        for index, q in enumerate(QUANTILES)
    ]


def thresholds(
    base: str, *steps: tuple[float, str]
) -> dashboard_builders.ThresholdsConfig:
    return (
        dashboard_builders.ThresholdsConfig()
        .mode(model.ThresholdsMode.ABSOLUTE)
        .steps(
            [model.Threshold(value=None, color=base)]
            + [model.Threshold(value=value, color=color) for value, color in steps]
        )
    )


def fixed_color(color: str) -> model.DynamicConfigValue:
    return model.DynamicConfigValue(
        id_val="color", value={"mode": "fixed", "fixedColor": color}
    )


def shades_of(color: str) -> model.DynamicConfigValue:
    """Every series of one query in its own shade of one colour."""
    return model.DynamicConfigValue(
        id_val="color", value={"mode": "shades", "fixedColor": color}
    )


def timeseries_panel(
    title: str,
    description: str,
    unit: str,
    queries: Sequence[prometheus.Dataquery],
    *,
    width: int = 12,
    height: int = 8,
    legend_table: bool = False,
) -> timeseries.Panel:
    """Lines from zero with a legend; crowded panels get a table legend."""
    legend = (
        common_builders.VizLegendOptions()
        .show_legend(True)
        .display_mode(
            common.LegendDisplayMode.TABLE
            if legend_table
            else common.LegendDisplayMode.LIST
        )
        .placement(
            common.LegendPlacement.RIGHT
            if legend_table
            else common.LegendPlacement.BOTTOM
        )
        .calcs(["mean", "max", "lastNotNull"] if legend_table else [])
    )
    return (
        timeseries.Panel()
        .title(title)
        .description(description)
        .datasource(DATASOURCE)
        .targets(list(queries))
        .unit(unit)
        .min(0)
        .line_width(1)
        .fill_opacity(10)
        .show_points(common.VisibilityMode.NEVER)
        .legend(legend)
        .tooltip(
            common_builders.VizTooltipOptions()
            .mode(common.TooltipDisplayMode.MULTI)
            .sort(common.SortOrder.DESCENDING)
        )
        .span(width)
        .height(height)
    )


def stat_panel(
    title: str,
    description: str,
    unit: str,
    queries: Sequence[prometheus.Dataquery],
    *,
    width: int = 8,
    height: int = 4,
) -> stat.Panel:
    """The last value of each series, its background coloured by threshold."""
    return (
        stat.Panel()
        .title(title)
        .description(description)
        .datasource(DATASOURCE)
        .targets(list(queries))
        .unit(unit)
        .reduce_options(
            common_builders.ReduceDataOptions().calcs(["lastNotNull"]).values(False)
        )
        .color_mode(common.BigValueColorMode.BACKGROUND)
        .graph_mode(common.BigValueGraphMode.AREA)
        .text_mode(common.BigValueTextMode.VALUE_AND_NAME)
        .span(width)
        .height(height)
    )


def state_panel(
    title: str,
    description: str,
    expr: str,
    ok: str,
    failed: str,
) -> stat.Panel:
    """One tile per instance of a 0/1 gauge: ``ok`` in green, ``failed`` in red."""
    mapping = model.ValueMap(
        options={
            "1": model.ValueMappingResult(text=ok, color=GREEN, index=0),
            "0": model.ValueMappingResult(text=failed, color=RED, index=1),
        }
    )
    return (
        stat_panel(title, description, "none", [query(expr, "{{instance}}")])
        .graph_mode(common.BigValueGraphMode.NONE)
        .mappings([mapping])
        .thresholds(thresholds(RED, (1, GREEN)))
    )


def row(title: str) -> dashboard_builders.Row:
    return dashboard_builders.Row(title)


def as_stacked_bars(panel: timeseries.Panel) -> timeseries.Panel:
    """Bars, one series on top of the other, so their total reads at a glance."""
    return (
        panel.draw_style(common.GraphDrawStyle.BARS)
        .fill_opacity(80)
        .stacking(common_builders.StackingConfig().mode(common.StackingMode.NORMAL))
    )


def with_threshold_lines(
    panel: timeseries.Panel, config: dashboard_builders.ThresholdsConfig
) -> timeseries.Panel:
    """Thresholds drawn as dashed lines across the graph."""
    return panel.thresholds(config).thresholds_style(
        common_builders.GraphThresholdsStyleConfig().mode(
            common.GraphThresholdsStyleMode.DASHED
        )
    )

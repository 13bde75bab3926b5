"""Grafana finds the datasource the dashboards name and loads them into BitLoot."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml

from grafana.generate import DASHBOARDS_DIR
from grafana.panels import DATASOURCE_UID

PROVISIONING = DASHBOARDS_DIR.parent / "provisioning"


def _read(relative: str) -> dict[str, Any]:
    loaded: dict[str, Any] = yaml.safe_load((PROVISIONING / relative).read_text())
    return loaded


def test_the_datasource_is_the_default_prometheus_with_the_dashboards_uid() -> None:
    """Dashboards name it by uid, so the two must agree."""
    (datasource,) = _read("datasources/prometheus.yml")["datasources"]

    assert datasource["uid"] == DATASOURCE_UID
    assert datasource["type"] == "prometheus"
    assert datasource["url"] == "http://prometheus:9090"
    assert datasource["isDefault"] is True


def test_the_scrape_interval_is_told_to_grafana() -> None:
    """$__rate_interval is four of Prometheus' scrape intervals at the least."""
    (datasource,) = _read("datasources/prometheus.yml")["datasources"]
    scrape_config = yaml.safe_load(
        (
            Path(__file__).resolve().parents[2] / "prometheus" / "prometheus.yml"
        ).read_text()
    )

    assert (
        datasource["jsonData"]["timeInterval"]
        == scrape_config["global"]["scrape_interval"]
    )


def test_the_dashboards_load_from_files_into_the_bitloot_folder() -> None:
    """One file provider, folder BitLoot, read-only in the UI."""
    (provider,) = _read("dashboards/bitloot.yml")["providers"]

    assert provider["type"] == "file"
    assert provider["folder"] == "BitLoot"
    assert provider["allowUiUpdates"] is False
    assert provider["options"]["path"].startswith("/")

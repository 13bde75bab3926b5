"""docker-compose.yml runs the system as the design describes, and scales."""

from __future__ import annotations

import re
import subprocess
from pathlib import Path
from typing import Any

import pytest
import yaml

from grafana.generate import OVERVIEW_UID
from tests.support.prometheus import find_tool

ROOT = Path(__file__).resolve().parents[2]
COMPOSE_FILE = ROOT / "docker-compose.yml"
SERVICES = {
    "otp": ("services.otp", 4001),
    "email": ("services.email", 4002),
    "payment": ("services.payment", 4003),
    "webhook-ingest": ("services.webhook_ingest", 4004),
}
REQUIRED = re.compile(r"\$\{(\w+):\?")


def _compose() -> dict[str, Any]:
    loaded: dict[str, Any] = yaml.safe_load(COMPOSE_FILE.read_text())
    return loaded


def _service(name: str) -> dict[str, Any]:
    service: dict[str, Any] = _compose()["services"][name]
    return service


def _mounts(service: dict[str, Any]) -> dict[str, tuple[str, str]]:
    """Each mount's target and its (source, mode)."""
    mounts = {}
    for volume in service.get("volumes", []):
        source, target, *mode = volume.split(":")
        mounts[target] = (source, mode[0] if mode else "rw")
    return mounts


def _required_variables() -> set[str]:
    return set(REQUIRED.findall(COMPOSE_FILE.read_text()))


def _docker_compose(
    tmp_path: Path, env: dict[str, str], *arguments: str
) -> subprocess.CompletedProcess[str]:
    """Run docker-compose on the file, blind to any .env of the developer's."""
    binary = find_tool("docker-compose")
    no_env_file = tmp_path / "empty.env"
    no_env_file.write_text("")
    return subprocess.run(
        [
            binary,
            "--project-directory",
            str(ROOT),
            "--env-file",
            str(no_env_file),
            "-f",
            str(COMPOSE_FILE),
            *arguments,
        ],
        capture_output=True,
        text=True,
        env={"PATH": "/usr/bin:/bin", **env},
        check=False,
    )


def test_docker_compose_accepts_the_file_once_the_secrets_are_set(
    tmp_path: Path,
) -> None:
    """`docker-compose config -q` validates the whole file, interpolated."""
    secrets = {name: "not-a-real-secret" for name in _required_variables()}

    result = _docker_compose(tmp_path, secrets, "config", "-q")

    assert result.returncode == 0, result.stderr


def test_docker_compose_refuses_to_start_without_the_secrets(tmp_path: Path) -> None:
    """An empty secret is never silently used; the message says what to set."""
    result = _docker_compose(tmp_path, {}, "config", "-q")

    assert result.returncode != 0
    assert "in .env" in result.stderr


def test_env_example_lists_every_variable_the_compose_file_requires() -> None:
    """cp .env.example .env leaves the user only values to fill in."""
    example = (ROOT / ".env.example").read_text()
    documented = set(re.findall(r"^(\w+)=", example, re.M))

    assert _required_variables() <= documented
    for name in _required_variables():
        assert re.search(rf"^{name}=$", example, re.M), f"{name} must ship empty"


def test_the_four_services_run_one_image_each_with_its_own_command() -> None:
    """python -m services.<name>, listening on every interface at its port."""
    for name, (module, port) in SERVICES.items():
        service = _service(name)
        environment = service["environment"]

        assert service["image"] == "bitloot:dev"
        assert service["command"] == ["python", "-m", module]
        assert environment["BITLOOT_HTTP_HOST"] == "0.0.0.0"
        assert environment["BITLOOT_HTTP_PORT"] == str(port)


def test_every_service_has_a_healthcheck_and_restarts_unless_stopped() -> None:
    """The health check asks /healthz with Python, since slim images lack curl."""
    for name in SERVICES:
        service = _service(name)

        assert service["restart"] == "unless-stopped"
        test = " ".join(service["healthcheck"]["test"])
        assert "python" in test
        assert "/healthz" in test


def test_services_start_after_migrations_keys_and_the_broker() -> None:
    """One-shot steps must have finished, not merely started."""
    for name in SERVICES:
        depends_on = _service(name)["depends_on"]

        assert depends_on["migrate"]["condition"] == "service_completed_successfully"
        assert depends_on["keys"]["condition"] == "service_completed_successfully"
        assert depends_on["rabbitmq"]["condition"] == "service_healthy"
    assert _service("migrate")["command"] == ["bitloot", "migrate"]
    assert _service("migrate")["depends_on"]["postgres"]["condition"] == (
        "service_healthy"
    )


def test_scaled_replicas_register_distinct_reachable_targets() -> None:
    """No fixed host port and no fixed advertised address on any service.

    Each replica then advertises its own hostname (the Dockerfile's default),
    names its discovery file after it, and publishes on a free host port.
    """
    for name, (_, port) in SERVICES.items():
        service = _service(name)

        assert "BITLOOT_ADVERTISE_HOST" not in service["environment"]
        assert "hostname" not in service
        assert "container_name" not in service
        assert service["ports"] == [f"127.0.0.1::{port}"]
    assert "$(hostname)" in (ROOT / "Dockerfile").read_text()


def test_services_and_prometheus_share_the_discovery_volume() -> None:
    """Services write their files where Prometheus' config looks for them."""
    prometheus = _mounts(_service("prometheus"))

    assert prometheus["/etc/prometheus/targets"] == ("sd", "ro")
    for name in SERVICES:
        service = _service(name)
        sd_dir = service["environment"]["BITLOOT_SD_DIR"]
        assert _mounts(service)[sd_dir] == ("sd", "rw")
        # Mounted by the keys step first, the volume is owned by the services'
        # user, not by root as a mount from Prometheus' image would leave it.
        assert _mounts(_service("keys"))[sd_dir] == ("sd", "rw")
    assert "keys" in _service("prometheus")["depends_on"]


def test_prometheus_reads_the_token_the_keys_step_mints() -> None:
    """credentials_file is secrets/prometheus.token beside the config."""
    prometheus = _mounts(_service("prometheus"))
    keys = _service("keys")
    script = " ".join(keys["command"])
    (token_dir,) = [
        target
        for target, (source, _) in _mounts(keys).items()
        if source == "prometheus-token"
    ]

    assert prometheus["/etc/prometheus/secrets"] == ("prometheus-token", "ro")
    assert f"{token_dir}/prometheus.token" in script
    assert "bitloot token --scope metrics:read" in script
    assert "bitloot keygen" in script


def test_only_the_keys_step_and_otp_see_the_private_key() -> None:
    """otp signs logins, read-only; every other service verifies with the public key."""
    for name, service in _compose()["services"].items():
        mounts = {source: mode for source, mode in _mounts(service).values()}
        if name == "otp":
            assert mounts["signing-key"] == "ro"
        elif name != "keys":
            assert "signing-key" not in mounts, name
    for name in SERVICES:
        assert _mounts(_service(name))["/var/lib/bitloot/public-key"] == (
            "public-key",
            "ro",
        )


def test_prometheus_mounts_its_config_and_rules_read_only() -> None:
    """The repository's files, laid out as prometheus/README.md asks."""
    mounts = _mounts(_service("prometheus"))

    assert mounts["/etc/prometheus/prometheus.yml"] == (
        "./prometheus/prometheus.yml",
        "ro",
    )
    assert mounts["/etc/prometheus/rules"] == ("./prometheus/rules", "ro")
    assert mounts["/etc/prometheus/alertmanagers/compose.json"][1] == "ro"
    assert "127.0.0.1:9090:9090" in _service("prometheus")["ports"]


def test_every_image_is_pinned_to_a_version() -> None:
    """No latest, no bare name: an upgrade is a change to this file."""
    for name, service in _compose()["services"].items():
        image = service["image"]
        if image == "bitloot:dev":
            continue
        tag = image.rpartition(":")[2]
        assert ":" in image and tag != "latest", name
        assert re.search(r"\d+\.\d+", tag), f"{name}: {image}"


def test_grafana_publishes_3001_with_provisioning_and_dashboards_read_only() -> None:
    """The provider's path is where the generated dashboards are mounted."""
    grafana = _service("grafana")
    mounts = _mounts(grafana)
    provider = yaml.safe_load(
        (ROOT / "grafana/provisioning/dashboards/bitloot.yml").read_text()
    )["providers"][0]

    assert "127.0.0.1:3001:3000" in grafana["ports"]
    assert mounts["/etc/grafana/provisioning"] == ("./grafana/provisioning", "ro")
    assert mounts[provider["options"]["path"]] == ("./grafana/dashboards", "ro")
    home = grafana["environment"]["GF_DASHBOARDS_DEFAULT_HOME_DASHBOARD_PATH"]
    assert home == f"{provider['options']['path']}/{OVERVIEW_UID}.json"


def test_the_operator_interfaces_are_published_on_localhost() -> None:
    """Alertmanager, the RabbitMQ UI and its metrics, and the mail catcher."""
    assert "127.0.0.1:9093:9093" in _service("alertmanager")["ports"]
    assert "127.0.0.1:15672:15672" in _service("rabbitmq")["ports"]
    assert "127.0.0.1:15692:15692" in _service("rabbitmq")["ports"]
    assert "127.0.0.1:8025:8025" in _service("mailpit")["ports"]
    assert _service("email")["environment"]["BITLOOT_SMTP_HOST"] == "mailpit"


def test_postgres_keeps_its_data_and_reports_ready() -> None:
    """A named volume, and pg_isready as the health check."""
    postgres = _service("postgres")

    assert _mounts(postgres)["/var/lib/postgresql/data"][0] == "postgres-data"
    assert "pg_isready" in postgres["healthcheck"]["test"]


def test_the_image_runs_as_an_unprivileged_user_and_keeps_secrets_out() -> None:
    """python:3.11-slim, a USER that is not root, .env never in the context."""
    dockerfile = (ROOT / "Dockerfile").read_text()
    dockerignore = (ROOT / ".dockerignore").read_text().splitlines()
    users = re.findall(r"^USER\s+(\S+)", dockerfile, re.M)

    assert all(
        line.startswith("FROM python:3.11-slim")
        for line in dockerfile.splitlines()
        if line.startswith("FROM ")
    )
    assert users and users[-1] not in ("root", "0")
    # Everything is left out but what is named back in: never .env or .run/.
    assert "*" in dockerignore
    admitted = {line for line in dockerignore if line.startswith("!")}
    assert admitted == {"!pyproject.toml", "!shared/", "!services/", "!contracts/"}


@pytest.mark.parametrize("name", sorted(SERVICES))
def test_each_service_module_is_a_runnable_package(name: str) -> None:
    """`python -m services.<name>` needs a __main__ (otp once it lands)."""
    module, _ = SERVICES[name]
    main = ROOT.joinpath(*module.split("."), "__main__.py")
    if name == "otp" and not main.exists():
        pytest.skip("the otp service is not in this tree yet")

    assert main.exists()

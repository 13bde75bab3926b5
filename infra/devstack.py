"""``make run``: the whole system on one machine, in the foreground until Ctrl-C.

Checks that PostgreSQL and RabbitMQ answer, creates what a first run needs under
``.run/`` (database, signing keys, webhook secrets, Prometheus' token and
config), starts the local SMTP sink, every service and Prometheus, and stops
them all on Ctrl-C.
"""

from __future__ import annotations

import asyncio
import os
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlsplit, urlunsplit

import aio_pika
import asyncpg

from shared.auth import METRICS_SCOPE, TokenIssuer, generate_key_pair, load_private_key
from shared.settings import CommonSettings, load_settings_or_exit

ROOT = Path(__file__).resolve().parent.parent
RUN = ROOT / ".run"
PROMETHEUS_PORT = 9090
MAIL_DIR = RUN / "mail"
LOCAL_HOSTS = ("127.0.0.1", "localhost", "::1")


@dataclass(frozen=True)
class Service:
    name: str
    module: str
    port: int


SERVICES = (
    Service("otp", "services.otp", 4001),
    Service("email", "services.email", 4002),
    Service("payment", "services.payment", 4003),
    Service("webhook-ingest", "services.webhook_ingest", 4004),
)


def main() -> int:
    settings = load_settings_or_exit(CommonSettings)
    RUN.mkdir(exist_ok=True)
    env = dict(os.environ)

    if not asyncio.run(_check_backends(settings)):
        return 1
    _prepare_keys(env)
    _prepare_secrets(env)
    # The local Prometheus reads targets beside its config, so make run
    # always registers there, whatever BITLOOT_SD_DIR says.
    env["BITLOOT_SD_DIR"] = str(RUN / "targets")
    (RUN / "targets").mkdir(exist_ok=True)
    # Where Prometheus looks for Alertmanagers: none here, but the folder must
    # exist or Prometheus logs an error on every start.
    (RUN / "alertmanagers").mkdir(exist_ok=True)
    (RUN / "brokers").mkdir(exist_ok=True)
    _prepare_prometheus(env)

    processes: dict[str, subprocess.Popen[bytes]] = {}
    try:
        mailsink = _start_mailsink(env)
        if mailsink is not None:
            processes["mailsink"] = mailsink
        for service in SERVICES:
            processes[service.name] = _start_service(service, env)
        prometheus = _start_prometheus()
        if prometheus is not None:
            processes["prometheus"] = prometheus
        if not _wait_healthy(processes, env):
            return 1
        _print_access_points(
            prometheus is not None, _smtp_port(env) if mailsink else None
        )
        return _supervise(processes)
    finally:
        _stop_all(processes)


async def _check_backends(settings: CommonSettings) -> bool:
    ok = True
    database = urlsplit(settings.database_url)
    admin_url = urlunsplit(database._replace(path="/postgres"))
    name = database.path.lstrip("/") or "bitloot"
    try:
        connection = await asyncpg.connect(admin_url, timeout=5)
    except (OSError, asyncpg.PostgresError, TimeoutError) as error:
        print(
            f"PostgreSQL is not reachable at {database.hostname}:{database.port}: "
            f"{error}\n  start it, e.g. `pg_ctlcluster 15 main start` or "
            "`docker run -p 5432:5432 -e POSTGRES_HOST_AUTH_METHOD=trust postgres:16`,"
            "\n  or point BITLOOT_DATABASE_URL at yours",
            file=sys.stderr,
        )
        ok = False
    else:
        try:
            exists = await connection.fetchval(
                "SELECT 1 FROM pg_database WHERE datname = $1", name
            )
            if not exists:
                await connection.execute(f'CREATE DATABASE "{name}"')
                print(f"created database {name}", file=sys.stderr)
        finally:
            await connection.close()

    amqp = urlsplit(settings.amqp_url)
    try:
        broker = await aio_pika.connect(settings.amqp_url, timeout=5)
        await broker.close()
    except Exception as error:
        print(
            f"RabbitMQ is not reachable at {amqp.hostname}:{amqp.port or 5672}: "
            f"{error}\n  start it, e.g. `rabbitmq-server -detached` or "
            "`docker run -p 5672:5672 rabbitmq:3-management`,"
            "\n  or point BITLOOT_AMQP_URL at yours",
            file=sys.stderr,
        )
        ok = False
    return ok


def _prepare_keys(env: dict[str, str]) -> None:
    if "BITLOOT_JWT_PRIVATE_KEY_FILE" in env:
        return
    keys = RUN / "keys"
    if not (keys / "jwt-private.pem").exists():
        generate_key_pair(keys)
        print(f"created dev signing keys in {keys}", file=sys.stderr)
    env["BITLOOT_JWT_PRIVATE_KEY_FILE"] = str(keys / "jwt-private.pem")
    env.setdefault("BITLOOT_JWT_PUBLIC_KEY_FILE", str(keys / "jwt-public.pem"))


def _prepare_secrets(env: dict[str, str]) -> None:
    """Random webhook secrets for a first run, kept in files, never printed."""
    folder = RUN / "secrets"
    folder.mkdir(exist_ok=True)
    for variable, file_name in (
        ("BITLOOT_NOWPAYMENTS_IPN_SECRET", "nowpayments-ipn-secret"),
        ("BITLOOT_KINGUIN_WEBHOOK_SECRET", "kinguin-webhook-secret"),
        ("BITLOOT_OTP_HASH_SECRET", "otp-hash-secret"),
    ):
        if env.get(variable):
            continue
        path = folder / file_name
        if not path.exists():
            path.touch(mode=0o600)
            path.write_text(secrets.token_urlsafe(32))
        env[variable] = path.read_text().strip()


def _prepare_prometheus(env: dict[str, str]) -> None:
    """Lay out .run/ as Prometheus' config folder: config, targets, token, rules."""
    shutil.copyfile(ROOT / "prometheus" / "prometheus.yml", RUN / "prometheus.yml")
    rules = RUN / "rules"
    if rules.is_symlink() or rules.exists():
        rules.unlink() if rules.is_symlink() else shutil.rmtree(rules)
    if (ROOT / "prometheus" / "rules").is_dir():
        rules.symlink_to(ROOT / "prometheus" / "rules")
    issuer = TokenIssuer(
        load_private_key(Path(env["BITLOOT_JWT_PRIVATE_KEY_FILE"])),
        env.get("BITLOOT_JWT_ISSUER", "bitloot"),
        env.get("BITLOOT_JWT_AUDIENCE", "bitloot"),
    )
    token_file = RUN / "secrets" / "prometheus.token"
    token_file.touch(mode=0o600)
    token_file.write_text(issuer.mint("prometheus", [METRICS_SCOPE], 365 * 24 * 3600))


def _start_service(service: Service, env: dict[str, str]) -> subprocess.Popen[bytes]:
    # One port variable cannot serve several services: each gets its own.
    service_env = {**env, "BITLOOT_HTTP_PORT": str(service.port)}
    return subprocess.Popen(
        [sys.executable, "-m", service.module], cwd=ROOT, env=service_env
    )


def _smtp_port(env: dict[str, str]) -> int:
    return int(env.get("BITLOOT_SMTP_PORT") or 1025)


def _start_mailsink(env: dict[str, str]) -> subprocess.Popen[bytes] | None:
    """The local SMTP sink, unless email goes through Resend or a real server."""
    if env.get("BITLOOT_EMAIL_PROVIDER", "smtp") != "smtp":
        return None
    if env.get("BITLOOT_SMTP_HOST", "127.0.0.1") not in LOCAL_HOSTS:
        return None
    return subprocess.Popen(
        [
            sys.executable,
            "-m",
            "infra.mailsink",
            "--host",
            "127.0.0.1",
            "--port",
            str(_smtp_port(env)),
            "--dir",
            str(MAIL_DIR),
        ],
        cwd=ROOT,
    )


def _start_prometheus() -> subprocess.Popen[bytes] | None:
    binary = shutil.which("prometheus")
    if binary is None:
        print(
            "prometheus is not installed; running without it "
            "(Debian: apt-get install prometheus)",
            file=sys.stderr,
        )
        return None
    log = (RUN / "prometheus.log").open("ab")
    return subprocess.Popen(
        [
            binary,
            f"--config.file={RUN / 'prometheus.yml'}",
            f"--storage.tsdb.path={RUN / 'prometheus-data'}",
            f"--web.listen-address=127.0.0.1:{PROMETHEUS_PORT}",
        ],
        cwd=RUN,
        stdout=log,
        stderr=log,
    )


def _wait_healthy(
    processes: dict[str, subprocess.Popen[bytes]], env: dict[str, str]
) -> bool:
    checks = {s.name: f"http://127.0.0.1:{s.port}/healthz" for s in SERVICES}
    if "prometheus" in processes:
        checks["prometheus"] = f"http://127.0.0.1:{PROMETHEUS_PORT}/-/ready"
    if "mailsink" in processes:
        checks["mailsink"] = f"smtp://127.0.0.1:{_smtp_port(env)}"
    deadline = time.monotonic() + 30
    pending = dict(checks)
    while pending and time.monotonic() < deadline:
        for name, url in list(pending.items()):
            if processes[name].poll() is not None:
                print(
                    f"{name} exited during start-up; see its log above", file=sys.stderr
                )
                return False
            if _answers(url):
                del pending[name]
        time.sleep(0.2)
    if pending:
        print(f"not healthy after 30 s: {', '.join(pending)}", file=sys.stderr)
        return False
    return True


def _answers(url: str) -> bool:
    """True once ``url`` answers: 200 over HTTP, or a TCP accept for smtp://."""
    if url.startswith("smtp://"):
        host, _, port = url.removeprefix("smtp://").rpartition(":")
        try:
            with socket.create_connection((host, int(port)), timeout=1):
                return True
        except OSError:
            return False
    try:
        with urllib.request.urlopen(url, timeout=1) as response:
            return bool(response.status == 200)
    except (urllib.error.URLError, OSError):
        return False


def _print_access_points(with_prometheus: bool, mail_port: int | None) -> None:
    lines = ["", "BitLoot is running:"]
    for service in SERVICES:
        lines.append(f"  {service.name:<16} http://127.0.0.1:{service.port}")
    if with_prometheus:
        lines.append(f"  {'prometheus':<16} http://127.0.0.1:{PROMETHEUS_PORT}")
    if mail_port is not None:
        lines.append(f"  {'mail (SMTP)':<16} 127.0.0.1:{mail_port} -> {MAIL_DIR}/")
    lines += [
        "",
        "  read metrics:    TOKEN=$(.venv/bin/bitloot token --scope metrics:read)",
        '                   curl -H "Authorization: Bearer $TOKEN" '
        "http://127.0.0.1:4004/metrics",
        "  place an order:  curl -s -X POST http://127.0.0.1:4003/v1/orders "
        "-H 'Content-Type: application/json' \\",
        '                     -d \'{"email": "you@example.com", "items": '
        '[{"product_id": "steam-gift-card-20", "quantity": 1}], '
        '"pay_currency": "btc"}\'',
        "  pay it (demo):   .venv/bin/bitloot simulate payment ORDER_ID --paid 0.0001",
        "  read the emails: ls .run/mail/",
        "  webhook secrets: .run/secrets/",
        "  Ctrl-C stops everything.",
        "",
    ]
    print("\n".join(lines), file=sys.stderr, flush=True)


def _supervise(processes: dict[str, subprocess.Popen[bytes]]) -> int:
    stop = False

    def request_stop(*_: object) -> None:
        nonlocal stop
        stop = True

    signal.signal(signal.SIGINT, request_stop)
    signal.signal(signal.SIGTERM, request_stop)
    while not stop:
        for name, process in processes.items():
            if process.poll() is not None:
                print(
                    f"{name} exited with {process.returncode}; stopping",
                    file=sys.stderr,
                )
                return 1
        time.sleep(0.5)
    print("stopping…", file=sys.stderr)
    return 0


def _stop_all(processes: dict[str, subprocess.Popen[bytes]]) -> None:
    for process in processes.values():
        if process.poll() is None:
            process.send_signal(signal.SIGTERM)
    deadline = time.monotonic() + 20
    for process in processes.values():
        try:
            process.wait(timeout=max(0.1, deadline - time.monotonic()))
        except subprocess.TimeoutExpired:
            process.kill()


if __name__ == "__main__":
    raise SystemExit(main())

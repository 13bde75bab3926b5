"""Fixtures: each test gets its own database; each run its own RabbitMQ vhost."""

from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import pytest
import structlog

from services.email.bootstrap import NOTIFICATIONS_QUEUE, OTP_QUEUE
from services.email.bootstrap import SPEC as EMAIL
from services.email.settings import EmailSettings
from services.otp.bootstrap import build_spec
from services.otp.settings import OtpSettings
from services.payment.bootstrap import IPN_QUEUE, KINGUIN_QUEUE
from services.payment.bootstrap import SPEC as PAYMENT
from services.payment.settings import PaymentSettings
from services.webhook_ingest.bootstrap import SPEC as WEBHOOK_INGEST
from services.webhook_ingest.settings import WebhookIngestSettings
from shared.auth import METRICS_SCOPE, TokenIssuer, generate_key_pair, load_private_key
from shared.service import RunningService, ServiceSpec, start_service
from shared.settings import CommonSettings
from tests.support import infra
from tests.support.otp import ManualClock
from tests.support.tcp_proxy import TcpProxy

NOWPAYMENTS_SECRET = "test-ipn-secret"
KINGUIN_SECRET = "test-kinguin-secret"
OTP_HASH_SECRET = "test-otp-hash-secret-0123456789"


def queue_family(*queues: str) -> list[str]:
    """Each consumer queue with its retry steps and its dead-letter queue."""
    suffixes = ("", ".retry.0", ".retry.1", ".dlq")
    return [f"{queue}{suffix}" for queue in queues for suffix in suffixes]


@asynccontextmanager
async def running_instances(
    spec: ServiceSpec[Any],
    make_settings: Callable[[dict[str, Any]], CommonSettings],
    amqp_url: str,
    queues: list[str],
) -> AsyncIterator[Callable[..., Awaitable[RunningService]]]:
    """A starter of instances consuming once started; all stop on leaving.

    The vhost lives for the whole run, so the service's queues are deleted
    before and after: no test consumes what another left behind.
    """
    await infra.delete_queues(amqp_url, queues)
    running: list[RunningService] = []

    async def start(**overrides: Any) -> RunningService:
        service = await start_service(spec, make_settings(overrides))
        for consumer in service.runtime.consumers:
            assert await consumer.wait_consuming(10), consumer.queue_name
        running.append(service)
        return service

    try:
        yield start
    finally:
        for service in reversed(running):
            await service.stop()
        await infra.delete_queues(amqp_url, queues)


@pytest.fixture(autouse=True)
def _fresh_log_context() -> Iterator[None]:
    structlog.contextvars.clear_contextvars()
    yield
    structlog.contextvars.clear_contextvars()


@pytest.fixture(scope="session")
def vhost() -> Iterator[str]:
    name = infra.unique_name("bitloot_test")
    infra.create_vhost(name)
    yield name
    infra.delete_vhost(name)


@pytest.fixture(scope="session")
def amqp_url(vhost: str) -> str:
    return infra.amqp_url(vhost)


@pytest.fixture
async def database_url() -> AsyncIterator[str]:
    name = infra.unique_name("bitloot_test")
    url = await infra.create_database(name)
    yield url
    await infra.drop_database(name)


@pytest.fixture(scope="session")
def key_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    directory = tmp_path_factory.mktemp("keys")
    generate_key_pair(directory)
    return directory


@pytest.fixture(scope="session")
def token_issuer(key_dir: Path) -> TokenIssuer:
    return TokenIssuer(
        load_private_key(key_dir / "jwt-private.pem"), "bitloot", "bitloot"
    )


@pytest.fixture(scope="session")
def metrics_token(token_issuer: TokenIssuer) -> str:
    return token_issuer.mint("tests", [METRICS_SCOPE], 3600)


@pytest.fixture
def sd_dir(tmp_path: Path) -> Path:
    return tmp_path / "targets"


@pytest.fixture
def common_env(
    database_url: str, amqp_url: str, key_dir: Path, sd_dir: Path
) -> dict[str, Any]:
    """Settings every service under test shares, as keyword overrides."""
    return {
        "database_url": database_url,
        "amqp_url": amqp_url,
        "http_host": "127.0.0.1",
        "http_port": 0,
        "sd_dir": sd_dir,
        "jwt_public_key_file": key_dir / "jwt-public.pem",
        "log_format": "json",
        "outbox_poll_seconds": 0.2,
        "amqp_reconnect_seconds": 0.3,
        "shutdown_timeout_seconds": 5.0,
        "consumer_retry_seconds": (0.2, 0.5),
    }


StartIngest = Callable[..., Awaitable[RunningService]]


@pytest.fixture
async def start_ingest(common_env: dict[str, Any]) -> AsyncIterator[StartIngest]:
    """Start webhook-ingest instances in this process; all stop after the test."""
    running: list[RunningService] = []

    async def start(**overrides: Any) -> RunningService:
        values = {
            **common_env,
            "nowpayments_ipn_secret": NOWPAYMENTS_SECRET,
            "kinguin_webhook_secret": KINGUIN_SECRET,
            **overrides,
        }
        settings = WebhookIngestSettings(**values)
        service = await start_service(WEBHOOK_INGEST, settings)
        running.append(service)
        return service

    yield start
    for service in reversed(running):
        await service.stop()


StartPayment = Callable[..., Awaitable[RunningService]]


@pytest.fixture
async def start_payment(common_env: dict[str, Any]) -> AsyncIterator[StartPayment]:
    """Start payment instances consuming from the test's vhost; all stop after."""
    queues = [*queue_family(IPN_QUEUE, KINGUIN_QUEUE), "payment.event-log"]
    async with running_instances(
        PAYMENT,
        lambda overrides: PaymentSettings(**{**common_env, **overrides}),
        common_env["amqp_url"],
        queues,
    ) as start:
        yield start


@pytest.fixture
async def amqp_proxy() -> AsyncIterator[TcpProxy]:
    host, _, port = infra.AMQP_HOST.partition(":")
    proxy = TcpProxy(host, int(port))
    await proxy.start()
    yield proxy
    await proxy.close()


@pytest.fixture
async def postgres_proxy() -> AsyncIterator[TcpProxy]:
    proxy = TcpProxy("127.0.0.1", 5432)
    await proxy.start()
    yield proxy
    await proxy.close()


StartEmail = Callable[..., Awaitable[RunningService]]
EMAIL_QUEUES = [*queue_family(OTP_QUEUE, NOTIFICATIONS_QUEUE), "email.event-log"]


@pytest.fixture
async def start_email(common_env: dict[str, Any]) -> AsyncIterator[StartEmail]:
    """Start email instances sending to ``smtp_port``; all stop after the test.

    Retries are fast here (0.05 s doubling) so that failure paths finish soon.
    """
    fast = {
        "smtp_timeout_seconds": 2.0,
        "email_retry_base_seconds": 0.05,
        "email_retry_max_seconds": 0.2,
        "email_poll_seconds": 0.1,
        "email_lease_seconds": 5.0,
    }
    async with running_instances(
        EMAIL,
        lambda overrides: EmailSettings(**{**common_env, **fast, **overrides}),
        common_env["amqp_url"],
        EMAIL_QUEUES,
    ) as start:
        yield start


StartOtp = Callable[..., Awaitable[RunningService]]


@pytest.fixture
def otp_clock() -> ManualClock:
    """The otp instances' clock; it moves only when the test moves it."""
    return ManualClock()


@pytest.fixture
async def start_otp(
    common_env: dict[str, Any], key_dir: Path, otp_clock: ManualClock
) -> AsyncIterator[StartOtp]:
    """Start otp instances that share ``otp_clock``; all stop after the test."""
    signing = {
        "jwt_private_key_file": key_dir / "jwt-private.pem",
        "otp_hash_secret": OTP_HASH_SECRET,
    }
    async with running_instances(
        build_spec(otp_clock),
        lambda overrides: OtpSettings(**{**common_env, **signing, **overrides}),
        common_env["amqp_url"],
        ["otp.event-log"],
    ) as start:
        yield start

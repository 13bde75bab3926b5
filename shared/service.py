"""Starting and stopping a service: its resources, its HTTP site, its SD entry.

Resources open in order in aiohttp's ``cleanup_ctx`` (database, broker, outbox
relay, then whatever the service adds) and close in reverse after in-flight
requests have been answered, so nothing accepted is left half done.
"""

from __future__ import annotations

import asyncio
import signal
from collections.abc import AsyncIterator, Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Generic, TypeVar

import asyncpg
import structlog
from aiohttp import web

from shared.auth import KeyFileError, TokenVerifier, load_public_key
from shared.broker import Broker
from shared.consumer import EventConsumer, EventHandler
from shared.db import create_pool, discover_migrations, migrate
from shared.discovery import register_target, unregister_target
from shared.http import ServiceState, create_app
from shared.logging import configure_logging
from shared.metrics import ServiceMetrics
from shared.outbox import OutboxRelay
from shared.settings import CommonSettings, SettingsError, load_settings_or_exit

logger = structlog.get_logger(__name__)

SettingsT = TypeVar("SettingsT", bound=CommonSettings)


class StartupError(Exception):
    """The service cannot start; the message says what to fix."""


@dataclass
class Runtime(Generic[SettingsT]):
    """The wired resources of one running service instance."""

    spec: ServiceSpec[SettingsT]
    settings: SettingsT
    metrics: ServiceMetrics
    app: web.Application
    pool: asyncpg.Pool | None = None
    broker: Broker | None = None
    relay: OutboxRelay | None = None
    consumers: list[EventConsumer] = field(default_factory=list)

    def require_pool(self) -> asyncpg.Pool:
        assert self.pool is not None, "the pool opens before service contexts run"
        return self.pool


ServiceContext = Callable[[Runtime[SettingsT]], AsyncIterator[None]]


@dataclass(frozen=True)
class ConsumerSpec(Generic[SettingsT]):
    """A durable queue the service consumes, and how to build its handler."""

    queue: str
    routing_keys: Sequence[str]
    handler: Callable[[Runtime[SettingsT]], EventHandler]


@dataclass
class ServiceSpec(Generic[SettingsT]):
    """What makes one service: its names, settings, migrations and wiring."""

    name: str
    schema: str
    settings_class: type[SettingsT]
    migrations_dir: Path
    setup: Callable[[Runtime[SettingsT]], None]
    published_types: Sequence[str] = ()
    contexts: Sequence[ServiceContext[SettingsT]] = field(default_factory=tuple)
    consumers: Sequence[ConsumerSpec[SettingsT]] = field(default_factory=tuple)
    # Published types that no service consumes; they go to <name>.event-log.
    unconsumed_types: Sequence[str] = ()


@dataclass
class RunningService:
    """A started instance: where it listens and how to stop it."""

    name: str
    host: str
    port: int
    runner: web.AppRunner
    runtime: Runtime[Any]
    sd_file: Path | None

    @property
    def url(self) -> str:
        return f"http://{self.host}:{self.port}"

    async def stop(self) -> None:
        """Leave discovery, answer requests in flight, then close resources."""
        if self.sd_file is not None:
            unregister_target(self.sd_file)
        await self.runner.cleanup()
        logger.info("service_stopped", port=self.port)


async def start_service(
    spec: ServiceSpec[SettingsT], settings: SettingsT, register: bool = True
) -> RunningService:
    """Start an instance: migrate, open resources, listen, then announce itself."""
    if settings.migrate_on_start:
        migrations = discover_migrations(spec.migrations_dir)
        await migrate(settings.database_url, spec.schema, migrations)

    metrics = ServiceMetrics(spec.name)
    metrics.prime_published(spec.published_types)
    state = ServiceState(name=spec.name, metrics=metrics, verifier=_verifier(settings))
    app = create_app(state, client_max_size=settings.max_body_bytes)
    runtime: Runtime[SettingsT] = Runtime(spec, settings, metrics, app)
    app.cleanup_ctx.append(_database(runtime, state))
    app.cleanup_ctx.append(_broker(runtime, state))
    app.cleanup_ctx.append(_relay(runtime))
    for context in spec.contexts:
        app.cleanup_ctx.append(_bind(context, runtime))
    # Consumers start last, once everything their handlers use is open, and
    # stop first, finishing the messages they hold before anything closes.
    for consumer in spec.consumers:
        app.cleanup_ctx.append(_consumer(consumer, runtime))
    spec.setup(runtime)

    runner = web.AppRunner(
        app,
        shutdown_timeout=settings.shutdown_timeout_seconds,
        access_log=None,
        handle_signals=False,
    )
    await runner.setup()
    site = web.TCPSite(runner, settings.http_host, settings.http_port)
    await site.start()
    port = int(runner.addresses[0][1])

    sd_file = None
    if register:
        sd_file = register_target(
            settings.sd_dir,
            spec.name,
            settings.advertise_host,
            port,
            {"env": settings.environment},
        )
    logger.info("service_started", host=settings.http_host, port=port)
    return RunningService(
        spec.name, settings.advertise_host, port, runner, runtime, sd_file
    )


def _verifier(settings: CommonSettings) -> TokenVerifier | None:
    path = settings.jwt_public_key_file
    if path is None:
        logger.warning(
            "metrics_unprotected_key_missing",
            detail="BITLOOT_JWT_PUBLIC_KEY_FILE is not set; /metrics answers 503",
        )
        return None
    try:
        key = load_public_key(path)
    except KeyFileError as error:
        raise StartupError(f"BITLOOT_JWT_PUBLIC_KEY_FILE: {error}") from None
    return TokenVerifier(key, settings.jwt_issuer, settings.jwt_audience)


def _bind(
    context: ServiceContext[SettingsT], runtime: Runtime[SettingsT]
) -> Callable[[web.Application], AsyncIterator[None]]:
    def bound(_: web.Application) -> AsyncIterator[None]:
        return context(runtime)

    return bound


def _database(
    runtime: Runtime[SettingsT], state: ServiceState
) -> Callable[[web.Application], AsyncIterator[None]]:
    async def database(_: web.Application) -> AsyncIterator[None]:
        settings = runtime.settings
        try:
            pool = await create_pool(
                settings.database_url,
                runtime.spec.schema,
                settings.db_pool_min,
                settings.db_pool_max,
            )
        except (OSError, asyncpg.PostgresError) as error:
            message = f"cannot reach PostgreSQL (BITLOOT_DATABASE_URL): {error}"
            raise StartupError(message) from None
        runtime.pool = pool
        runtime.metrics.database_connected.set(1)

        async def check_database() -> None:
            try:
                await pool.fetchval("SELECT 1")
            except Exception:
                runtime.metrics.database_connected.set(0)
                raise
            runtime.metrics.database_connected.set(1)

        state.readiness["database"] = check_database
        yield
        await pool.close()

    return database


def _broker(
    runtime: Runtime[SettingsT], state: ServiceState
) -> Callable[[web.Application], AsyncIterator[None]]:
    async def broker_context(_: web.Application) -> AsyncIterator[None]:
        spec = runtime.spec
        broker = Broker(
            runtime.settings.amqp_url,
            runtime.settings.amqp_reconnect_seconds,
            event_log=f"{spec.name}.event-log",
            event_log_keys=tuple(spec.unconsumed_types),
        )
        await broker.start()
        await broker.wait_connected(timeout=2.0)
        runtime.broker = broker
        runtime.metrics.broker_connected.set_function(
            lambda: 1.0 if broker.is_connected() else 0.0
        )

        async def check_broker() -> None:
            if not broker.is_connected():
                raise ConnectionError("RabbitMQ is not connected")

        state.readiness["broker"] = check_broker
        yield
        await broker.close()

    return broker_context


def _relay(
    runtime: Runtime[SettingsT],
) -> Callable[[web.Application], AsyncIterator[None]]:
    async def relay_context(_: web.Application) -> AsyncIterator[None]:
        settings = runtime.settings
        assert runtime.broker is not None
        relay = OutboxRelay(
            runtime.require_pool(),
            settings.database_url,
            runtime.spec.schema,
            runtime.broker,
            runtime.metrics,
            poll_seconds=settings.outbox_poll_seconds,
            batch_size=settings.outbox_batch_size,
            publish_timeout=settings.publish_timeout_seconds,
        )
        await relay.start()
        runtime.relay = relay
        yield
        await relay.stop()

    return relay_context


def _consumer(
    consumer_spec: ConsumerSpec[SettingsT], runtime: Runtime[SettingsT]
) -> Callable[[web.Application], AsyncIterator[None]]:
    async def consumer_context(_: web.Application) -> AsyncIterator[None]:
        assert runtime.broker is not None
        consumer = EventConsumer(
            runtime.broker,
            runtime.require_pool(),
            runtime.metrics,
            queue=consumer_spec.queue,
            routing_keys=consumer_spec.routing_keys,
            handler=consumer_spec.handler(runtime),
            retry_delays=runtime.settings.consumer_retry_seconds,
        )
        await consumer.start()
        runtime.consumers.append(consumer)
        yield
        await consumer.stop()

    return consumer_context


def run_forever(spec: ServiceSpec[SettingsT]) -> None:
    """The ``python -m services.<name>`` entry point: run until SIGTERM or Ctrl-C."""
    settings = load_settings_or_exit(spec.settings_class)
    configure_logging(spec.name, settings.log_level, settings.log_format)
    try:
        asyncio.run(_serve(spec, settings))
    except (StartupError, SettingsError) as error:
        logger.error("service_start_failed", error=str(error))
        raise SystemExit(1) from None
    except KeyboardInterrupt:
        pass


async def _serve(spec: ServiceSpec[SettingsT], settings: SettingsT) -> None:
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(signum, stop.set)
    try:
        running = await start_service(spec, settings)
    except OSError as error:
        raise StartupError(str(error)) from None
    try:
        await stop.wait()
        logger.info("service_stopping")
    finally:
        await running.stop()

"""Structured logs: JSON lines off a terminal, a readable console on one."""

from __future__ import annotations

import logging
import sys
from typing import Any

import structlog

logger = structlog.get_logger(__name__)


def configure_logging(service: str, level: str = "info", fmt: str = "auto") -> None:
    """Log our own events through structlog, and the libraries' through logging.

    Our lines skip the standard library's machinery, which costs several times
    more per line; both end up on stderr in the same format.
    """
    if fmt == "auto":
        fmt = "console" if sys.stderr.isatty() else "json"
    renderer: Any
    if fmt == "console":
        renderer = structlog.dev.ConsoleRenderer()
        exceptions: list[Any] = []  # the console renderer formats them itself
    else:
        renderer = structlog.processors.JSONRenderer()
        exceptions = [structlog.processors.format_exc_info]
    common: list[Any] = [
        structlog.contextvars.merge_contextvars,
        structlog.processors.add_log_level,
        structlog.processors.TimeStamper(fmt="iso", utc=True),
        _add_service(service),
    ]
    structlog.configure(
        processors=[*common, *exceptions, renderer],
        logger_factory=structlog.WriteLoggerFactory(file=sys.stderr),
        wrapper_class=structlog.make_filtering_bound_logger(
            logging.getLevelNamesMapping()[level.upper()]
        ),
        cache_logger_on_first_use=True,
    )
    formatter = structlog.stdlib.ProcessorFormatter(
        foreign_pre_chain=[*common, structlog.stdlib.add_logger_name],
        processors=[
            structlog.stdlib.ProcessorFormatter.remove_processors_meta,
            *exceptions,
            renderer,
        ],
    )
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(formatter)
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level.upper())
    # aiohttp's access log repeats what our request middleware already logs.
    logging.getLogger("aiohttp.access").setLevel(logging.WARNING)


def _add_service(service: str) -> Any:
    def add(_: Any, __: str, event: dict[str, Any]) -> dict[str, Any]:
        event.setdefault("service", service)
        return event

    return add


def bind_correlation_id(correlation_id: str) -> None:
    """Attach the correlation id to every line logged in this task from now on."""
    structlog.contextvars.bind_contextvars(correlation_id=correlation_id)


def mask_email(address: str) -> str:
    """Show enough of an address to recognise it in a log, never all of it."""
    local, _, domain = address.partition("@")
    return f"{local[:1]}***@{domain}" if domain else "***"

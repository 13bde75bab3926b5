"""The developer's SMTP sink: takes every message and keeps each as an .eml file.

``python -m infra.mailsink --host 127.0.0.1 --port 1025 --dir .run/mail`` runs
until Ctrl-C or SIGTERM. Nothing is relayed anywhere; an email service pointed
at it "sends" for real, and the files open in any mail client. Names sort by
arrival: ``20261203T213000Z-1a2b3c4d-your-order-is-paid.eml``. Each file is
written beside its final name and renamed, so a reader never sees half of one.
Any login is accepted, without TLS, so a configuration with credentials works
unchanged.
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import os
import re
import secrets
import signal
import sys
import tempfile
import unicodedata
from datetime import UTC, datetime
from email.parser import BytesHeaderParser
from email.policy import default
from pathlib import Path
from types import TracebackType
from typing import Any

from aiosmtpd.smtp import SMTP, AuthResult, Envelope, Session

ROOT = Path(__file__).resolve().parent.parent
DEFAULT_HOST = "127.0.0.1"
DEFAULT_PORT = 1025
DEFAULT_DIR = ROOT / ".run" / "mail"
SERVER_NAME = "mailsink.localhost"
SLUG_CHARS = 48


class MailSink:
    """A sink saving into ``folder``; ``close()`` or leaving ``async with`` stops it."""

    def __init__(self, folder: Path) -> None:
        self.folder = folder
        self.host = ""
        self.port = 0
        self._handler = _Handler(folder)
        self._server: asyncio.Server | None = None
        self._connections: list[SMTP] = []

    async def start(self, host: str, port: int) -> None:
        """Listen on ``host:port``; port 0 picks a free one, read back as ``port``."""
        self.folder.mkdir(parents=True, exist_ok=True)
        _quiet_login_deprecation()
        loop = asyncio.get_running_loop()
        self._server = await loop.create_server(self._connection, host, port)
        address = self._server.sockets[0].getsockname()
        self.host, self.port = str(address[0]), int(address[1])

    async def close(self) -> None:
        """Stop listening and drop open connections; saved files stay."""
        server, self._server = self._server, None
        if server is not None:
            server.close()
            await server.wait_closed()
        for connection in self._connections:
            if connection.transport is not None:
                connection.transport.close()
        self._connections.clear()
        await asyncio.sleep(0)

    async def __aenter__(self) -> MailSink:
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        await self.close()

    def _connection(self) -> SMTP:
        connection = SMTP(
            self._handler,
            # Explicit, or aiosmtpd asks DNS for the FQDN on every connection.
            hostname=SERVER_NAME,
            enable_SMTPUTF8=True,
            auth_require_tls=False,
            authenticator=_accept_any_login,
            loop=asyncio.get_running_loop(),
        )
        self._connections = [c for c in self._connections if c.transport is not None]
        self._connections.append(connection)
        return connection


async def serve_mail(host: str, port: int, folder: Path) -> MailSink:
    """Start a sink on ``host:port`` (0: a free port) saving into ``folder``."""
    sink = MailSink(folder)
    await sink.start(host, port)
    return sink


class _Handler:
    """aiosmtpd's DATA hook: every message is saved; RCPT takes any address."""

    def __init__(self, folder: Path) -> None:
        self._folder = folder

    async def handle_DATA(
        self, server: SMTP, session: Session, envelope: Envelope
    ) -> str:
        content = envelope.original_content or envelope.content or b""
        if isinstance(content, str):
            content = content.encode("utf-8")
        trace = _trace_headers(envelope.mail_from, envelope.rcpt_tos)
        try:
            name = await asyncio.to_thread(self._save, trace + content)
        except OSError as error:
            print(f"mail sink: could not save a message: {error}", file=sys.stderr)
            return "451 4.3.0 Could not store the message"
        print(f"mail sink: saved {name}", file=sys.stderr, flush=True)
        return f"250 2.0.0 Ok: saved as {name}"

    def _save(self, content: bytes) -> str:
        name = eml_name(content, datetime.now(UTC))
        handle, temporary = tempfile.mkstemp(
            dir=self._folder, prefix=".incoming-", suffix=".tmp"
        )
        try:
            with os.fdopen(handle, "wb") as file:
                file.write(content)
            os.replace(temporary, self._folder / name)
        except BaseException:
            Path(temporary).unlink(missing_ok=True)
            raise
        return name


def eml_name(content: bytes, received_at: datetime) -> str:
    """``<UTC time>-<random id>-<subject slug>.eml`` for a message's raw bytes.

    The random part keeps two copies of the same email apart, which is the
    point when checking for duplicate sends.
    """
    try:
        headers = BytesHeaderParser(policy=default).parsebytes(content)
        subject = str(headers["Subject"] or "")
    except Exception:
        # The email package can trip over malformed headers; a sink keeps the
        # message anyway, only its name loses the subject.
        subject = ""
    stamp = received_at.astimezone(UTC).strftime("%Y%m%dT%H%M%SZ")
    return f"{stamp}-{secrets.token_hex(4)}-{_slug(subject)}.eml"


def _slug(subject: str) -> str:
    ascii_text = (
        unicodedata.normalize("NFKD", subject).encode("ascii", "ignore").decode()
    )
    slug = re.sub(r"[^a-z0-9]+", "-", ascii_text.lower()).strip("-")
    return slug[:SLUG_CHARS].rstrip("-") or "no-subject"


def _trace_headers(mail_from: str | None, rcpt_tos: list[str]) -> bytes:
    """Return-Path and Delivered-To, as a mailbox would add: the envelope shows."""
    lines = [f"Return-Path: <{mail_from or ''}>"]
    lines += [f"Delivered-To: {recipient}" for recipient in rcpt_tos]
    return ("\r\n".join(lines) + "\r\n").encode("utf-8")


class _LoginDataDeprecation(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        return not record.getMessage().startswith("Session.login_data is deprecated")


def _quiet_login_deprecation() -> None:
    """Drop aiosmtpd's warning about its own use of ``login_data``.

    aiosmtpd 1.4 logs it on every successful AUTH whatever the caller does.
    """
    log = logging.getLogger("mail.log")
    if not any(isinstance(f, _LoginDataDeprecation) for f in log.filters):
        log.addFilter(_LoginDataDeprecation())


def _accept_any_login(
    server: SMTP, session: Session, envelope: Envelope, mechanism: str, data: Any
) -> AuthResult:
    return AuthResult(success=True)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m infra.mailsink",
        description="Accept every SMTP message and save each as an .eml file.",
    )
    parser.add_argument("--host", default=DEFAULT_HOST)
    parser.add_argument("--port", type=int, default=DEFAULT_PORT)
    parser.add_argument("--dir", type=Path, default=DEFAULT_DIR, dest="folder")
    args = parser.parse_args(argv)
    folder = args.folder.resolve()
    return asyncio.run(_serve_until_stopped(args.host, args.port, folder))


async def _serve_until_stopped(host: str, port: int, folder: Path) -> int:
    try:
        sink = await serve_mail(host, port, folder)
    except OSError as error:
        print(f"mail sink: cannot listen on {host}:{port}: {error}", file=sys.stderr)
        return 1
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for signal_number in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(signal_number, stop.set)
    async with sink:
        print(
            f"mail sink: SMTP on {sink.host}:{sink.port}, mail lands in {sink.folder}",
            file=sys.stderr,
            flush=True,
        )
        await stop.wait()
    print("mail sink: stopped", file=sys.stderr)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

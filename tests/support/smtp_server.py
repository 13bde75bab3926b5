"""A local SMTP server a test controls: records mail and misbehaves on request.

Built on aiosmtpd's protocol, served by the test's own event loop, so what it
records can be read without locks. Addresses choose the behaviour: a recipient
whose local part starts with ``rejected`` is refused with 550 5.1.1 (no such
user), ``unrelayed`` with 550 5.7.54 (relaying denied, a policy refusal), and
``greylisted`` gets 451 for DATA. ``misbehave`` makes every session go wrong
at one point: ``hang_at_rcpt`` stops answering before it accepts anything (it
never takes the message), ``hang_after_data`` keeps the message and answers its
DATA only after ``hang_seconds``, and ``drop_after_data`` keeps the message and
hangs up instead of answering. The last two are a real server that took the
message but whose answer was lost. Refusals echo the address, as real servers
do.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass
from email.message import EmailMessage
from email.parser import BytesParser
from email.policy import default
from types import TracebackType
from typing import Any, Literal

from aiosmtpd.smtp import SMTP, Envelope, Session

HOST = "127.0.0.1"
SERVER_NAME = "smtp.test.invalid"

Misbehaviour = Literal["hang_at_rcpt", "hang_after_data", "drop_after_data"]


@dataclass(frozen=True)
class ReceivedMail:
    """One accepted message: its envelope, its bytes as received (CRLF) and the
    message parsed back with plain newlines."""

    mail_from: str
    rcpt_tos: tuple[str, ...]
    message: EmailMessage
    raw: bytes


def _local_part(address: str) -> str:
    return address.rpartition("@")[0].lower()


class SmtpServer:
    """An SMTP server on 127.0.0.1, on a free port.

    Use ``async with SmtpServer() as smtp:``, then point a client at
    ``smtp.port``; ``smtp.messages`` lists what was accepted, in order.
    """

    def __init__(self, *, hang_seconds: float = 5.0) -> None:
        self.misbehave: Misbehaviour | None = None
        self.hang_seconds = hang_seconds
        self.messages: list[ReceivedMail] = []
        self._arrived = asyncio.Event()
        self._hanging: set[asyncio.Task[object]] = set()
        self._server: asyncio.Server | None = None
        self._connections: list[SMTP] = []
        self._port: int | None = None

    @property
    def port(self) -> int:
        """The port it listens on; only once started."""
        if self._port is None:
            raise RuntimeError("the test SMTP server is not started")
        return self._port

    async def start(self) -> int:
        """Listen on a free port of 127.0.0.1 and return it."""
        loop = asyncio.get_running_loop()
        self._server = await loop.create_server(self._connection, HOST, 0)
        self._port = int(self._server.sockets[0].getsockname()[1])
        return self._port

    async def stop(self) -> None:
        """Stop listening and drop every connection, a hanging one included.

        A dropped connection cancels its aiosmtpd task; a hanging answer is
        awaited until that lands, since a late answer would write to a closed
        socket and aiosmtpd would log the error.
        """
        server, self._server = self._server, None
        if server is not None:
            server.close()
            await server.wait_closed()
        for connection in self._connections:
            if connection.transport is not None:
                connection.transport.close()
        self._connections.clear()
        if self._hanging:
            await asyncio.wait(self._hanging, timeout=self.hang_seconds)
        await asyncio.sleep(0)

    async def wait_for(self, count: int, timeout: float = 5.0) -> list[ReceivedMail]:
        """Wait until ``count`` messages have arrived; all of them so far."""
        try:
            async with asyncio.timeout(timeout):
                while len(self.messages) < count:
                    self._arrived.clear()
                    await self._arrived.wait()
        except TimeoutError:
            raise AssertionError(
                f"{len(self.messages)} of {count} messages arrived in {timeout:g} s"
            ) from None
        return list(self.messages)

    async def __aenter__(self) -> SmtpServer:
        await self.start()
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        await self.stop()

    def _connection(self) -> SMTP:
        # An explicit hostname: aiosmtpd would otherwise ask DNS for every
        # connection, blocking the loop.
        connection = SMTP(
            _Handler(self),
            hostname=SERVER_NAME,
            enable_SMTPUTF8=True,
            loop=asyncio.get_running_loop(),
        )
        self._connections = [c for c in self._connections if c.transport is not None]
        self._connections.append(connection)
        return connection

    async def hung(self) -> None:
        """Answer nothing for ``hang_seconds``, or until the connection drops."""
        task = asyncio.current_task()
        assert task is not None
        self._hanging.add(task)
        try:
            await asyncio.sleep(self.hang_seconds)
        finally:
            self._hanging.discard(task)

    def received(self, mail_from: str, rcpt_tos: tuple[str, ...], raw: bytes) -> None:
        """Record an accepted message and wake whoever waits for it."""
        # Parsed with the wire's CRLFs as plain newlines, as text in Python is.
        unix = raw.replace(b"\r\n", b"\n")
        message = BytesParser(policy=default).parsebytes(unix)
        self.messages.append(ReceivedMail(mail_from, rcpt_tos, message, raw))
        self._arrived.set()


class _Handler:
    """aiosmtpd's hooks, called by name: where the server's behaviours live."""

    def __init__(self, smtp: SmtpServer) -> None:
        self._smtp = smtp

    async def handle_RCPT(
        self,
        server: SMTP,
        session: Session,
        envelope: Envelope,
        address: str,
        rcpt_options: list[str],
    ) -> str:
        if self._smtp.misbehave == "hang_at_rcpt":
            await self._smtp.hung()
            return "451 4.3.2 Try again later"
        local_part = _local_part(address)
        if local_part.startswith("rejected"):
            return f"550 5.1.1 <{address}>: Recipient address rejected: User unknown"
        if local_part.startswith("unrelayed"):
            return f"550 5.7.54 <{address}>: Unable to relay recipient"
        envelope.rcpt_tos.append(address)
        envelope.rcpt_options.extend(rcpt_options)
        return "250 2.1.5 OK"

    async def handle_DATA(
        self, server: SMTP, session: Session, envelope: Envelope
    ) -> str:
        for address in envelope.rcpt_tos:
            if _local_part(address).startswith("greylisted"):
                return (
                    f"451 4.7.1 <{address}>: Recipient address rejected: "
                    "Greylisted, try again later"
                )
        raw = _bytes(envelope.original_content or envelope.content)
        self._smtp.received(envelope.mail_from or "", tuple(envelope.rcpt_tos), raw)
        if self._smtp.misbehave == "drop_after_data" and server.transport:
            # Hanging on after the drop keeps aiosmtpd from answering a closed
            # socket; the dropped connection cancels the wait.
            server.transport.close()
        if self._smtp.misbehave in ("hang_after_data", "drop_after_data"):
            await self._smtp.hung()
        return "250 2.0.0 Ok: queued"


def _bytes(content: Any) -> bytes:
    if isinstance(content, bytes):
        return content
    return str(content or "").encode("utf-8")

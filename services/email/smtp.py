"""The SMTP email provider: one connection and one attempt per email.

The caller retries, so a send is a single attempt. SMTP cannot tell whether a
message whose DATA answer never came was delivered, hence ``deduplicates`` is
false; what this provider can do is make a repeat recognisable. The Message-ID
is derived from the idempotency key, so a second copy carries the same id, and
the ``Resend-Idempotency-Key`` header lets Resend's SMTP relay drop it.

Failures become ``SendError``: a refused recipient is an invalid address, any
other 5xx answer is final, and 4xx answers may succeed later. So may timeouts
and connection errors, but only before the DATA command: from then on the
server may hold the message and a lost answer says nothing about whether it
will deliver it, so a timeout or a dropped connection there is a final
``timeout``. Details name the SMTP code and the server's words with the
recipient's address masked, since servers like to echo it.
"""

from __future__ import annotations

import asyncio
import hashlib
import re
import socket
from datetime import UTC, datetime
from email.message import EmailMessage
from email.utils import format_datetime, parseaddr
from typing import Final, Literal

import aiosmtplib
from aiosmtplib.email import parse_address
from aiosmtplib.typing import Default

from services.email.domain import (
    FailureReason,
    OutgoingEmail,
    SendError,
    mask_recipient,
)
from services.email.providers import SMTP

SECURITY_MODES: Final = ("none", "starttls", "tls")
IDEMPOTENCY_HEADER = "Resend-Idempotency-Key"
MESSAGE_ID_DOMAIN = "bitloot"
DETAIL_CHARS = 300

# Refusals of RCPT that say the mailbox is wrong: unknown user, not local,
# mailbox name not allowed, bad syntax.
_ADDRESS_REFUSALS = frozenset({550, 551, 553, 501})
# An enhanced status code "5.7.x" is a policy refusal (relaying denied, sender
# not authorised): our configuration, not the recipient's address.
_POLICY_STATUS = re.compile(r"^\s*5\.7\.\d{1,3}\b")
_DOT_ATOM = re.compile(r"^[A-Za-z0-9-]+(\.[A-Za-z0-9-]+)*$")


class SmtpProvider:
    """Sends emails through an SMTP server; implements ``EmailProvider``."""

    name = SMTP
    deduplicates = False

    def __init__(
        self,
        host: str,
        port: int,
        username: str | None = None,
        password: str | None = None,
        security: str = "none",
        timeout: float = 10.0,
        local_hostname: str | None = None,
    ) -> None:
        """Configure the client; each send opens and closes its own connection.

        ``security`` is ``none`` (plain, no STARTTLS even if offered, as a local
        sink speaks), ``starttls`` (upgrade required) or ``tls`` (implicit TLS,
        usually port 465). ``timeout`` bounds each network step in seconds.
        ``local_hostname`` is the name given in EHLO; by default the machine's
        FQDN, looked up once.
        """
        if not host:
            raise ValueError("the SMTP host is empty")
        if not 0 < port < 65536:
            raise ValueError(f"the SMTP port is out of range: {port}")
        if security not in SECURITY_MODES:
            raise ValueError(
                f"security must be one of {', '.join(SECURITY_MODES)}: {security!r}"
            )
        if timeout <= 0:
            raise ValueError("timeout must be positive")
        if (username is None) != (password is None):
            raise ValueError("give both an SMTP username and a password, or neither")
        self._host = host
        self._port = port
        self._username = username
        self._password = password
        self._security = security
        self._timeout = timeout
        self._local_hostname = local_hostname

    async def send(self, email: OutgoingEmail) -> str:
        """Send ``email`` in one attempt and return its Message-ID.

        Raises ``SendError`` saying why the server did not take it, and whether
        trying again later may help.
        """
        try:
            recipient = parse_address(email.recipient)
        except ValueError:
            recipient = ""
        if "@" not in recipient:
            raise SendError(
                FailureReason.INVALID_ADDRESS,
                "the recipient address cannot be written on an SMTP command line",
                retryable=False,
            )
        message_id = message_id_for(email.idempotency_key, email.sender)
        message = _message(email, recipient, message_id)
        client = _Session(
            hostname=self._host,
            port=self._port,
            username=self._username,
            password=self._password,
            use_tls=self._security == "tls",
            start_tls=self._security == "starttls",
            timeout=self._timeout,
            local_hostname=await self._ehlo_name(),
        )
        try:
            async with client:
                await client.send_message(
                    message, sender=email.sender, recipients=[recipient]
                )
        except Exception as error:
            failure = _send_error(error, data_sent=client.data_sent)
            if failure is None:
                raise
            raise _redacted(failure, (email.recipient, recipient)) from None
        return message_id

    async def close(self) -> None:
        """Nothing to release: no connection outlives a send."""

    async def _ehlo_name(self) -> str:
        if self._local_hostname is None:
            # socket.getfqdn may wait on DNS; aiosmtplib would ask on every send.
            self._local_hostname = await asyncio.to_thread(socket.getfqdn)
        return self._local_hostname


class _Session(aiosmtplib.SMTP):
    """aiosmtplib's client, noting whether the DATA command has gone out.

    aiosmtplib sends DATA and the body in one call, so the wait for the 354
    between them counts as after: a lost answer there is final too, which may
    give up on an email a retry could have sent, but never sends one twice.
    """

    data_sent = False

    async def data(
        self,
        message: str | bytes,
        /,
        *,
        timeout: float | Literal[Default.token] | None = Default.token,
    ) -> aiosmtplib.SMTPResponse:
        self.data_sent = True
        return await super().data(message, timeout=timeout)


def message_id_for(idempotency_key: str, sender: str) -> str:
    """The Message-ID for a key: the same key always gives the same id.

    Its right-hand side is the sender's domain, which spam filters like to see
    match; ``bitloot`` when the sender has no usable domain.
    """
    digest = hashlib.sha256(idempotency_key.encode("utf-8")).hexdigest()[:32]
    domain = parseaddr(sender)[1].rpartition("@")[2].strip().lower()
    if not _DOT_ATOM.match(domain):
        domain = MESSAGE_ID_DOMAIN
    return f"<{digest}@{domain}>"


def _message(email: OutgoingEmail, recipient: str, message_id: str) -> EmailMessage:
    message = EmailMessage()
    message["From"] = email.sender
    message["To"] = recipient
    # A line break in a header value would be refused; a subject is one line.
    message["Subject"] = " ".join(email.subject.split())
    message["Date"] = format_datetime(datetime.now(UTC))
    message["Message-ID"] = message_id
    message[IDEMPOTENCY_HEADER] = email.idempotency_key
    message.set_content(email.text)
    message.add_alternative(email.html, subtype="html")
    return message


def _send_error(error: Exception, *, data_sent: bool) -> SendError | None:
    """The ``SendError`` for what aiosmtplib raised; None if it is not a send error.

    ``data_sent`` says whether the session got as far as the DATA command.
    Order matters: aiosmtplib's errors inherit from several of these at once
    (a connect timeout is also a connect error, a bad greeting is also a
    response).
    """
    if isinstance(error, aiosmtplib.SMTPRecipientsRefused) and error.recipients:
        return _refused_recipient(error.recipients[0])
    if isinstance(error, aiosmtplib.SMTPRecipientRefused):
        return _refused_recipient(error)
    if isinstance(error, aiosmtplib.SMTPResponseException):
        return _refused(error.code, error.message, _stage(error))
    if data_sent and isinstance(error, TimeoutError | OSError):
        # SMTP has no way to drop a second copy, so never risk sending one.
        return SendError(
            FailureReason.TIMEOUT,
            f"SMTP server did not confirm the message ({_describe(error)}); it "
            "may have been delivered, so it is not sent again",
            retryable=False,
        )
    if isinstance(error, TimeoutError):
        return SendError(
            FailureReason.TIMEOUT,
            f"SMTP server did not answer in time ({_describe(error)})",
            retryable=True,
        )
    if isinstance(error, OSError):
        # Also SMTPConnectError and SMTPServerDisconnected, and TLS errors.
        return SendError(
            FailureReason.API_ERROR,
            f"SMTP connection failed ({_describe(error)})",
            retryable=True,
        )
    if isinstance(error, aiosmtplib.SMTPNotSupported):
        # Only for a non-ASCII address on a server without SMTPUTF8; ours are ASCII.
        return SendError(
            FailureReason.INVALID_ADDRESS,
            f"SMTP server cannot take this address ({_describe(error)})",
            retryable=False,
        )
    if isinstance(error, aiosmtplib.SMTPException):
        # STARTTLS or AUTH not offered: configuration, which waiting will not fix.
        return SendError(
            FailureReason.API_ERROR,
            f"SMTP session failed ({_describe(error)})",
            retryable=False,
        )
    return None


def _refused_recipient(error: aiosmtplib.SMTPRecipientRefused) -> SendError:
    if error.code in _ADDRESS_REFUSALS and not _POLICY_STATUS.match(error.message):
        return SendError(
            FailureReason.INVALID_ADDRESS,
            f"SMTP {error.code} on RCPT: {_text(error.message)}",
            retryable=False,
        )
    return _refused(error.code, error.message, "on RCPT")


def _refused(code: int, message: str, stage: str) -> SendError:
    """A refusal: 5xx is final; 4xx, and anything unreadable, may pass later."""
    where = f" {stage}" if stage else ""
    return SendError(
        FailureReason.API_ERROR,
        f"SMTP {code}{where}: {_text(message)}",
        retryable=code < 500,
    )


def _stage(error: aiosmtplib.SMTPResponseException) -> str:
    if isinstance(error, aiosmtplib.SMTPConnectResponseError):
        return "on connect"
    if isinstance(error, aiosmtplib.SMTPHeloError):
        return "on EHLO"
    if isinstance(error, aiosmtplib.SMTPAuthenticationError):
        return "on AUTH"
    if isinstance(error, aiosmtplib.SMTPSenderRefused):
        return "on MAIL FROM"
    if isinstance(error, aiosmtplib.SMTPDataError):
        return "on DATA"
    return ""


def _redacted(failure: SendError, addresses: tuple[str, ...]) -> SendError:
    """The failure with the recipient's address masked and the detail bounded.

    Masking comes first so that a cut can never leave half an address behind.
    """
    detail = mask_recipient(" ".join(failure.detail.split()), *addresses)
    if len(detail) > DETAIL_CHARS:
        detail = detail[:DETAIL_CHARS] + "…"
    return SendError(
        failure.reason,
        detail,
        retryable=failure.retryable,
        retry_after=failure.retry_after,
    )


def _describe(error: BaseException) -> str:
    detail = str(error)
    name = type(error).__name__
    return f"{name}: {detail}" if detail else name


def _text(message: str) -> str:
    return message.strip() or "(no text)"

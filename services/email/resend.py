"""The Resend API client: sends one email with ``POST /emails``.

Each ``send()`` is a single attempt; the caller records attempts and decides when
to try again, so failures come back as ``SendError`` saying whether a retry may
help. Every request carries the email's idempotency key, which Resend keeps for
a day: a retry after a timeout, or after a 2xx we could not read, cannot deliver
the email twice, and that is what ``deduplicates = True`` promises the caller.

Error details are written to logs and to the attempts table, so they name the
HTTP status and Resend's error ``name`` and ``message`` but never the API key,
the recipient's address or the email's content.
"""

from __future__ import annotations

import json
import math
import re
from typing import Any

import aiohttp

from services.email.domain import (
    FailureReason,
    OutgoingEmail,
    SendError,
    mask_recipient,
)
from services.email.providers import RESEND
from shared.http_client import LazyClientSession

DEFAULT_BASE_URL = "https://api.resend.com"
EMAILS_PATH = "/emails"
USER_AGENT = "bitloot-email"
DETAIL_CHARS = 300
API_KEY_MASK = "***"

# Resend's error names whose meaning does not follow from the status alone.
VALIDATION_ERROR = "validation_error"
CONCURRENT_IDEMPOTENT_REQUESTS = "concurrent_idempotent_requests"
# A validation_error may be about any field; Resend names it in backticks
# ("Invalid `to` field. ..."). Only one about the recipient is the address's
# fault; a bad `from` or subject is ours and fails every email alike.
_ABOUT_RECIPIENT = re.compile(r"`to`|\brecipients?\b", re.IGNORECASE)


class ResendProvider:
    """Sends emails through Resend over HTTP; implements ``EmailProvider``."""

    name = RESEND
    deduplicates = True

    def __init__(
        self,
        *,
        api_key: str,
        base_url: str = DEFAULT_BASE_URL,
        timeout: float = 10.0,
    ) -> None:
        """Configure the client; no connection is made until the first send.

        ``timeout`` bounds the whole attempt, answer included, in seconds.
        """
        if not api_key:
            raise ValueError("the Resend API key is empty")
        if timeout <= 0:
            raise ValueError("timeout must be positive")
        self._api_key = api_key
        self._base_url = base_url.rstrip("/")
        self._timeout = timeout
        self._http = LazyClientSession(timeout)

    @property
    def base_url(self) -> str:
        """The API's base URL, without a trailing slash."""
        return self._base_url

    async def send(self, email: OutgoingEmail) -> str:
        """Send ``email`` once and return Resend's id for it.

        Raises ``SendError``: ``invalid_address`` (not retryable) when Resend's
        validation error is about the recipient, ``timeout`` (retryable) when
        no full answer came in time, and ``api_error`` for everything else,
        retryable for connection failures, 5xx, 429, a concurrent request with
        the same idempotency key and a 2xx we cannot read; not retryable for
        any other 4xx, a validation error about another field included.
        """
        body = json.dumps(
            {
                "from": email.sender,
                "to": [email.recipient],
                "subject": email.subject,
                "text": email.text,
                "html": email.html,
            },
            ensure_ascii=False,
        ).encode("utf-8")
        headers = {
            "Authorization": f"Bearer {self._api_key}",
            "Idempotency-Key": email.idempotency_key,
            "Content-Type": "application/json",
            "User-Agent": USER_AGENT,
        }
        session = self._http.get()
        try:
            async with session.post(
                self._base_url + EMAILS_PATH,
                data=body,
                headers=headers,
                allow_redirects=False,
            ) as response:
                status = response.status
                retry_after = response.headers.get("Retry-After")
                content_type = response.headers.get("Content-Type", "")
                raw = await response.read()
        except TimeoutError:
            # Also aiohttp's ServerTimeoutError, which is a ClientError too.
            raise SendError(
                FailureReason.TIMEOUT,
                f"Resend: no answer within {self._timeout:g} s",
                retryable=True,
            ) from None
        except (aiohttp.ClientError, OSError) as error:
            detail = self._clean(
                f"Resend: connection failed ({_describe(error)})", email
            )
            raise SendError(FailureReason.API_ERROR, detail, retryable=True) from None

        data = _json_object(raw)
        if 200 <= status < 300:
            message_id = None if data is None else data.get("id")
            if isinstance(message_id, str) and message_id.strip():
                return message_id.strip()
            what = "is not a JSON object" if data is None else "has no id"
            raise SendError(
                FailureReason.API_ERROR,
                f"Resend {status}: the answer {what} ({_shape(content_type, raw)})",
                retryable=True,
            )
        raise self._failure(status, data, content_type, raw, retry_after, email)

    async def close(self) -> None:
        """Close the HTTP session, if one was opened."""
        await self._http.close()

    def _failure(
        self,
        status: int,
        data: dict[str, Any] | None,
        content_type: str,
        raw: bytes,
        retry_after: str | None,
        email: OutgoingEmail,
    ) -> SendError:
        """The ``SendError`` for a non-2xx answer, classified by status and name."""
        name = _text_field(data, "name")
        message = _text_field(data, "message")
        if data is None:
            said = f": the answer is not a JSON object ({_shape(content_type, raw)})"
        elif name and message:
            said = f" {name}: {message}"
        else:
            said = f" {name or message or '(no error name or message)'}"
        detail = self._clean(f"Resend {status}{said}", email)

        if status in (400, 422) and name == VALIDATION_ERROR:
            reason = (
                FailureReason.INVALID_ADDRESS
                if _ABOUT_RECIPIENT.search(message)
                else FailureReason.API_ERROR
            )
            return SendError(reason, detail, retryable=False)
        if status == 429:
            return SendError(
                FailureReason.API_ERROR,
                detail,
                retryable=True,
                retry_after=_retry_after_seconds(retry_after),
            )
        if status == 409 and name == CONCURRENT_IDEMPOTENT_REQUESTS:
            return SendError(FailureReason.API_ERROR, detail, retryable=True)
        # 5xx may pass; any other answer (4xx, or a 1xx/3xx from a wrong base
        # URL) will be the same next time.
        return SendError(FailureReason.API_ERROR, detail, retryable=status >= 500)

    def _clean(self, text: str, email: OutgoingEmail) -> str:
        """``text`` on one line, without the key or the recipient, bounded."""
        flat = " ".join(text.split())
        flat = mask_recipient(
            flat.replace(self._api_key, API_KEY_MASK), email.recipient
        )
        if len(flat) > DETAIL_CHARS:
            return flat[: DETAIL_CHARS - 1] + "…"
        return flat


def _json_object(raw: bytes) -> dict[str, Any] | None:
    """The body as a JSON object, or None when it is not one."""
    try:
        data = json.loads(raw.decode("utf-8"))
    except ValueError:
        return None
    return data if isinstance(data, dict) else None


def _text_field(data: dict[str, Any] | None, field: str) -> str:
    value = None if data is None else data.get(field)
    return value.strip() if isinstance(value, str) else ""


def _shape(content_type: str, raw: bytes) -> str:
    """What a body looked like, without its content, which may quote the email."""
    kind = content_type.split(";", 1)[0].strip() or "no content type"
    return f"{kind}, {len(raw)} bytes"


def _retry_after_seconds(value: str | None) -> float | None:
    """A numeric ``Retry-After`` in seconds; None when absent, a date or odd."""
    if value is None:
        return None
    try:
        seconds = float(value.strip())
    except ValueError:
        return None
    if not math.isfinite(seconds) or seconds < 0:
        return None
    return seconds


def _describe(error: BaseException) -> str:
    detail = str(error)
    name = type(error).__name__
    return f"{name}: {detail}" if detail else name

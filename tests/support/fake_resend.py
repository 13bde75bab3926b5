"""A local Resend API a test controls: real shapes, scripted misbehaviour.

It answers ``POST /emails`` the way Resend does: 401 without a key, 403 for a
wrong one, 422 for a missing field or a malformed address, and 200 with the new
email's id. It honours ``Idempotency-Key`` as Resend does: the same key with the
same body answers the first id again without delivering twice, the same key with
another body is a 409, and so is a second request while the first one with that
key is still in progress. It records every request and every email it delivers.

Behaviours queued with ``script()`` take the next requests, one each. The
``validation_error*`` ones answer Resend's 422 about one field (``to`` by
default, or ``from``, ``reply_to``, ``subject``) whatever the request held. The
failures (``status_500``, ``status_429``, ``hang``, ``garbage``) stand for an
outage in front of Resend: nothing is delivered and the idempotency key is not
remembered, so a retry with the same key is a fresh send.
"""

from __future__ import annotations

import asyncio
import uuid
from collections import deque
from dataclasses import dataclass
from typing import Any, Literal

from aiohttp import web

from tests.support.local_server import LocalHttpServer

API_KEY = "re_test_fake_resend_api_key"
EMAILS_PATH = "/emails"
INVALID_TO = (
    "Invalid `to` field. The email address needs to follow the "
    "`email@example.com` or `Name <email@example.com>` format."
)
INVALID_FROM = (
    "Invalid `from` field. The email address needs to follow the "
    "`email@example.com` or `Name <email@example.com>` format."
)
INVALID_SUBJECT = "The `subject` field must be a `string`."
INVALID_REPLY_TO = (
    "Invalid `reply_to` field. The email address needs to follow the "
    "`email@example.com` or `Name <email@example.com>` format."
)
MAX_IDEMPOTENCY_KEY_CHARS = 256

Behaviour = Literal[
    "ok",
    "status_500",
    "status_429",
    "hang",
    "garbage",
    "validation_error",
    "validation_error_from",
    "validation_error_reply_to",
    "validation_error_subject",
]


@dataclass(frozen=True)
class DeliveredEmail:
    """One email the fake accepted, as its request body described it."""

    id: str
    idempotency_key: str | None
    sender: str
    to: tuple[str, ...]
    subject: str
    text: str | None
    html: str | None


@dataclass(frozen=True)
class _Remembered:
    """An idempotency key's first successful request and the id it was given."""

    payload: Any
    email_id: str


class FakeResend(LocalHttpServer):
    """Resend's ``POST /emails`` on 127.0.0.1, on a free port."""

    name = "fake Resend server"

    def __init__(self, api_key: str = API_KEY) -> None:
        super().__init__()
        self.api_key = api_key
        self.delivered: list[DeliveredEmail] = []
        self._script: deque[Behaviour] = deque()
        self._remembered: dict[str, _Remembered] = {}
        self._in_progress: set[str] = set()
        self._arrived = asyncio.Event()

    def script(self, *behaviours: Behaviour) -> None:
        """Queue behaviours for the next requests, one each; then it answers ok."""
        self._script.extend(behaviours)

    async def wait_for_requests(self, count: int) -> None:
        """Return once at least ``count`` requests have arrived."""
        while len(self.requests) < count:
            self._arrived.clear()
            await self._arrived.wait()

    def add_routes(self, app: web.Application) -> None:
        app.router.add_post(EMAILS_PATH, self._send_email)

    async def _send_email(self, request: web.Request) -> web.Response:
        parsed = (await self.record(request)).json
        self._arrived.set()
        behaviour: Behaviour = self._script.popleft() if self._script else "ok"
        key = request.headers.get("Idempotency-Key")

        if key is not None and key in self._in_progress:
            return _error(
                409,
                "concurrent_idempotent_requests",
                "Same idempotency key used while original request is still in "
                "progress.",
            )
        if key is not None:
            self._in_progress.add(key)
        try:
            return await self._answer(request, behaviour, key, parsed)
        finally:
            if key is not None:
                self._in_progress.discard(key)

    async def _answer(
        self, request: web.Request, behaviour: Behaviour, key: str | None, data: Any
    ) -> web.Response:
        if behaviour == "hang":
            # Never answers: the client gives up first. Stopping wakes it, so
            # the server's shutdown does not wait for it.
            await self.stopping.wait()
            return _error(503, "application_error", "The server is shutting down.")
        if behaviour == "status_500":
            return _error(
                500,
                "application_error",
                "An unexpected error occurred, please try again later.",
            )
        if behaviour == "status_429":
            return _error(
                429,
                "rate_limit_exceeded",
                "Too many requests. You can only make 2 requests per second. "
                "See rate limit response headers for more information.",
                headers={"retry-after": "1"},
            )
        if behaviour == "garbage":
            return web.Response(
                status=200,
                text="<html>upstream glitch</html>",
                content_type="text/html",
            )

        authorization = request.headers.get("Authorization", "")
        scheme, _, token = authorization.partition(" ")
        if scheme.lower() != "bearer" or not token.strip():
            return _error(
                401,
                "missing_api_key",
                "Missing API key in the authorization header. Include the "
                "following header in the request: Authorization: Bearer YOUR_API_KEY",
            )
        if token.strip() != self.api_key:
            return _error(403, "invalid_api_key", "API key is invalid")
        if key is not None and not 1 <= len(key) <= MAX_IDEMPOTENCY_KEY_CHARS:
            return _error(
                400, "invalid_idempotency_key", "The key must be between 1-256 chars."
            )
        if behaviour == "validation_error":
            return _error(422, "validation_error", INVALID_TO)
        if behaviour == "validation_error_from":
            return _error(422, "validation_error", INVALID_FROM)
        if behaviour == "validation_error_reply_to":
            return _error(422, "validation_error", INVALID_REPLY_TO)
        if behaviour == "validation_error_subject":
            return _error(422, "validation_error", INVALID_SUBJECT)

        if key is not None and key in self._remembered:
            remembered = self._remembered[key]
            if remembered.payload != data:
                return _error(
                    409,
                    "invalid_idempotent_request",
                    "Same idempotency key used with a different request payload. "
                    "Change your idempotency key or payload.",
                )
            return web.json_response({"id": remembered.email_id})

        problem = _invalid(data)
        if problem is not None:
            return _error(422, *problem)
        email = _delivered(data, key)
        self.delivered.append(email)
        if key is not None:
            self._remembered[key] = _Remembered(payload=data, email_id=email.id)
        return web.json_response({"id": email.id})


def _invalid(data: Any) -> tuple[str, str] | None:
    """Resend's error name and message for a send body, or None when it is fine."""
    if not isinstance(data, dict):
        return (
            "missing_required_field",
            "The request body is missing one or more required fields.",
        )
    for field in ("from", "to", "subject"):
        if data.get(field) in (None, "", []):
            return "missing_required_field", f"Missing `{field}` field."
    if not isinstance(data["from"], str) or not _looks_like_address(data["from"]):
        return "invalid_from_address", INVALID_FROM
    to = data["to"]
    recipients = [to] if isinstance(to, str) else to
    if not isinstance(recipients, list) or not all(
        isinstance(recipient, str) and _looks_like_address(recipient)
        for recipient in recipients
    ):
        return "validation_error", INVALID_TO
    if not isinstance(data["subject"], str):
        return "validation_error", INVALID_SUBJECT
    return None


def _looks_like_address(value: str) -> bool:
    """Loosely: ``a@b`` or ``Name <a@b>``, one "@" with text on both sides."""
    address = value.strip()
    if address.endswith(">") and "<" in address:
        address = address[address.rindex("<") + 1 : -1].strip()
    local, at, domain = address.partition("@")
    return bool(at) and bool(local) and bool(domain) and "@" not in domain


def _delivered(data: dict[str, Any], key: str | None) -> DeliveredEmail:
    to = data["to"]
    text = data.get("text")
    html = data.get("html")
    return DeliveredEmail(
        id=str(uuid.uuid4()),
        idempotency_key=key,
        sender=data["from"],
        to=(to,) if isinstance(to, str) else tuple(to),
        subject=data["subject"],
        text=text if isinstance(text, str) else None,
        html=html if isinstance(html, str) else None,
    )


def _error(
    status: int, name: str, message: str, *, headers: dict[str, str] | None = None
) -> web.Response:
    body = {"statusCode": status, "message": message, "name": name}
    return web.json_response(body, status=status, headers=headers)

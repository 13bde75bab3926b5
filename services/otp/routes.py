"""The otp service's HTTP API: ask for a code, exchange it for a token."""

from __future__ import annotations

import json
from contextlib import AbstractAsyncContextManager
from typing import Annotated, Any, TypeVar

from aiohttp import web
from pydantic import BaseModel, ConfigDict, EmailStr, StringConstraints, ValidationError

from services.otp.domain import VerificationFailure
from services.otp.handlers import (
    AddressLockedError,
    OtpService,
    RateLimitedError,
    RequestCode,
    VerificationFailedError,
    VerifyCode,
)
from shared.http import ApiError, correlation_id_of, read_body, storage_unavailable

BODY_LIMIT = 4 * 1024
# When the peer's address is unknown (a Unix socket), all such clients share one.
UNKNOWN_CLIENT = "unknown"

Code = Annotated[str, StringConstraints(strip_whitespace=True, pattern=r"^[0-9]{6}$")]


class CodeRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")

    email: EmailStr


class CodeVerification(BaseModel):
    model_config = ConfigDict(extra="forbid")

    email: EmailStr
    code: Code


BodyT = TypeVar("BodyT", bound=BaseModel)

FAILURE_DETAILS = {
    VerificationFailure.INVALID_CODE: "the code is wrong, or was used already",
    VerificationFailure.EXPIRED: "the code has expired; ask for a new one",
    VerificationFailure.TOO_MANY_ATTEMPTS: (
        "the code was tried wrongly too often and no longer works; ask for a new one"
    ),
}


class OtpRoutes:
    """Handlers over the otp service; the service opens once the pool does."""

    def __init__(self) -> None:
        self.service: OtpService | None = None

    def add_to(self, app: web.Application) -> None:
        app.router.add_post("/v1/otp/request", self.request_code)
        app.router.add_post("/v1/otp/verify", self.verify_code)

    def _service(self) -> OtpService:
        assert self.service is not None, "the service opens before requests arrive"
        return self.service

    async def request_code(self, request: web.Request) -> web.Response:
        body = _parse(await read_body(request, BODY_LIMIT), CodeRequest)
        # TODO: behind a proxy all clients share its address; trust X-Forwarded-For then
        command = RequestCode(
            email=str(body.email),
            client=request.remote or UNKNOWN_CLIENT,
            correlation_id=correlation_id_of(request),
        )

        try:
            async with _storage():
                lifetime = await self._service().request_code(command)
        except RateLimitedError as error:
            raise ApiError(
                429,
                "rate_limited",
                f"too many codes asked for; try again in {error.retry_after} s",
                {"Retry-After": str(error.retry_after)},
            ) from None

        return web.json_response(
            {"expires_in": int(lifetime.total_seconds())}, status=202
        )

    async def verify_code(self, request: web.Request) -> web.Response:
        body = _parse(await read_body(request, BODY_LIMIT), CodeVerification)
        command = VerifyCode(
            email=str(body.email),
            code=body.code,
            correlation_id=correlation_id_of(request),
        )

        try:
            async with _storage():
                token = await self._service().verify_code(command)
        except AddressLockedError as error:
            raise ApiError(
                401,
                error.reason.value,
                "too many wrong codes for this address; "
                f"try again in {error.retry_after} s",
                {"Retry-After": str(error.retry_after)},
            ) from None
        except VerificationFailedError as error:
            raise ApiError(
                401, error.reason.value, FAILURE_DETAILS[error.reason]
            ) from None

        return web.json_response(
            {
                "access_token": token.access_token,
                "token_type": "Bearer",
                "expires_in": token.expires_in,
            },
            headers={"Cache-Control": "no-store"},
        )


def _parse(raw: bytes, model: type[BodyT]) -> BodyT:
    try:
        document: Any = json.loads(raw)
    except (ValueError, RecursionError):
        raise ApiError(400, "invalid_json", "the body is not JSON") from None
    if not isinstance(document, dict):
        raise ApiError(400, "invalid_json", "the body is not a JSON object")
    try:
        return model.model_validate(document)
    except ValidationError as error:
        problem = error.errors()[0]
        where = ".".join(str(part) for part in problem["loc"]) or "body"
        code = "invalid_email" if where == "email" else "invalid_request"
        raise ApiError(422, code, f"{where}: {problem['msg']}") from None


def _storage() -> AbstractAsyncContextManager[None]:
    return storage_unavailable("the login database is unavailable; try again later")

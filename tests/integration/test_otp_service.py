"""The otp service on the real database and broker, its clock moved by the tests.

Codes are read where the email service would read them: from
``email.otp.requested`` on the exchange, through a test's own queue.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from datetime import timedelta
from pathlib import Path

import aiohttp
import asyncpg
import jwt
import pytest

from services.otp.bootstrap import SERVICE as OTP_SERVICE
from services.otp.handlers import RateLimitedError, RequestCode
from services.otp.store import Swept
from shared.auth import TokenVerifier, load_public_key
from shared.service import RunningService
from tests.conftest import StartIngest, StartOtp
from tests.support.events import EventTap
from tests.support.metrics import scrape, value
from tests.support.otp import (
    CODE_KEYS,
    SENTINEL,
    ManualClock,
    codes_sent,
    next_code,
    post,
    rate_limited,
    request_code,
    settled,
    verification_failed,
    verify_code,
    wrong,
)

PERSON = "person@example.com"
ADMIN = "boss@example.com"


@pytest.fixture
async def tap(amqp_url: str) -> AsyncIterator[EventTap]:
    """Every otp event from the start of the test, and the sentinel of settled()."""
    async with EventTap(amqp_url, [*CODE_KEYS, "user.registered", SENTINEL]) as tap:
        yield tap


@pytest.fixture
async def otp(start_otp: StartOtp) -> RunningService:
    return await start_otp(admin_emails=ADMIN)


async def log_in(otp: RunningService, tap: EventTap, email: str, nth: int = 1) -> str:
    """Ask for a code, read it off the exchange, exchange it; the access token."""
    status, _, _ = await request_code(otp.url, email)
    assert status == 202
    code = await next_code(tap, email, nth)
    status, answer = await verify_code(otp.url, email, code)
    assert status == 200, answer
    return str(answer["access_token"])


async def test_a_code_sent_by_email_is_exchanged_for_a_signed_token(
    otp: RunningService, tap: EventTap, key_dir: Path
) -> None:
    """202 with the lifetime, then 200 with an EdDSA token naming the new user."""
    status, answer, _ = await request_code(otp.url, "Person@Example.com")
    assert (status, answer) == (202, {"expires_in": 300})
    code = await next_code(tap, PERSON)

    status, answer = await verify_code(otp.url, "person@example.COM", code)

    assert status == 200, answer
    assert answer["token_type"] == "Bearer"
    assert answer["expires_in"] == 3600
    token = answer["access_token"]
    assert jwt.get_unverified_header(token)["alg"] == "EdDSA"
    public_key = load_public_key(key_dir / "jwt-public.pem")
    verifier = TokenVerifier(public_key, "bitloot", "bitloot")
    claims = verifier.verify(token, "user")
    assert claims.scopes == {"user"}
    raw = jwt.decode(token, options={"verify_signature": False})
    assert {"iss", "aud", "sub", "exp", "iat", "jti", "scope"} <= set(raw)
    assert raw["exp"] - raw["iat"] == 3600
    events = await tap.wait_until(
        lambda es: any(e["type"] == "user.registered" for e in es)
    )
    (registered,) = [e for e in events if e["type"] == "user.registered"]
    assert raw["sub"] == registered["data"]["user_id"]


async def test_otp_issued_carries_a_hash_and_only_the_email_command_the_code(
    otp: RunningService, tap: EventTap
) -> None:
    """The code and the address travel in email.otp.requested alone."""
    await request_code(otp.url, PERSON)
    code = await next_code(tap, PERSON)

    by_type = {e["type"]: e for e in tap.envelopes()}
    issued = by_type["otp.issued"]
    assert set(issued["data"]) == {"request_id", "email_hash", "expires_at"}
    assert code not in str(issued) and "example.com" not in str(issued)
    assert len(issued["data"]["email_hash"]) == 64
    command = by_type["email.otp.requested"]
    assert command["data"]["request_id"] == issued["data"]["request_id"]
    assert command["data"]["expires_at"] == issued["data"]["expires_at"]
    assert command["producer"] == "otp"


async def test_three_requests_a_minute_hold_across_two_instances_in_a_sliding_window(
    start_otp: StartOtp, otp_clock: ManualClock, metrics_token: str
) -> None:
    """Requests at 0, 20, 40 s fill the window; it frees as each one leaves it."""
    first, second = await start_otp(), await start_otp()
    assert first.port != second.port
    start = otp_clock.now

    def at(seconds: float) -> None:
        otp_clock.now = start + timedelta(seconds=seconds)

    for seconds, instance in ((0, first), (20, second), (40, first)):
        at(seconds)
        assert (await request_code(instance.url, PERSON))[0] == 202

    at(50)
    status, answer, headers = await request_code(second.url, PERSON)
    assert (status, answer["error"], headers["Retry-After"]) == (
        429,
        "rate_limited",
        "10",
    )
    at(59)
    status, _, headers = await request_code(first.url, PERSON)
    assert (status, headers["Retry-After"]) == (429, "1")
    at(60)  # the request at 0 s has left the window
    assert (await request_code(second.url, PERSON))[0] == 202
    at(61)
    status, _, headers = await request_code(first.url, PERSON)
    assert (status, headers["Retry-After"]) == (429, "19")
    assert (await request_code(second.url, "other@example.com"))[0] == 202

    refused = [
        rate_limited(await scrape(i.url, metrics_token)) for i in (first, second)
    ]
    assert refused == [2, 1]


async def test_twenty_concurrent_requests_for_one_address_get_exactly_three_codes(
    start_otp: StartOtp, database_url: str, metrics_token: str
) -> None:
    """However the requests race over two instances, 3 get 202 and 17 get 429."""
    instances = [await start_otp(), await start_otp()]

    answers = await asyncio.gather(
        *(request_code(instances[n % 2].url, PERSON) for n in range(20))
    )

    statuses = sorted(status for status, _, _ in answers)
    assert statuses == [202] * 3 + [429] * 17
    assert {h["Retry-After"] for s, _, h in answers if s == 429} == {"60"}
    refused = [rate_limited(await scrape(i.url, metrics_token)) for i in instances]
    assert sum(refused) == 17
    connection = await asyncpg.connect(database_url)
    try:
        assert await connection.fetchval("SELECT count(*) FROM otp.code_requests") == 3
    finally:
        await connection.close()


async def test_one_client_is_bounded_across_addresses(
    start_otp: StartOtp, otp_clock: ManualClock, metrics_token: str
) -> None:
    """Past the per-client limit, even a fresh address waits, with Retry-After."""
    otp = await start_otp(otp_client_requests_per_minute=4)
    for n in range(4):
        assert (await request_code(otp.url, f"person{n}@example.com"))[0] == 202
        otp_clock.advance(5)

    status, answer, headers = await request_code(otp.url, "fresh@example.com")

    assert (status, answer["error"], headers["Retry-After"]) == (
        429,
        "rate_limited",
        "40",
    )
    assert rate_limited(await scrape(otp.url, metrics_token)) == 1
    otp_clock.advance(40)
    assert (await request_code(otp.url, "fresh@example.com"))[0] == 202


async def test_addresses_of_one_ipv6_64_share_one_client_window(
    start_otp: StartOtp,
) -> None:
    """Another address from the same /64 is the same client; the next /64 is not."""
    otp = await start_otp(otp_client_requests_per_minute=2)
    service = otp.runtime.app[OTP_SERVICE]

    def asked(n: int, client: str) -> RequestCode:
        return RequestCode(f"person{n}@example.com", client, f"test-{n}")

    await service.request_code(asked(0, "2001:db8:1:2::1"))
    await service.request_code(asked(1, "2001:db8:1:2:ffff::2"))
    with pytest.raises(RateLimitedError) as refused:
        await service.request_code(asked(2, "2001:db8:1:2:abcd:1234:5678:9"))

    assert refused.value.limit == "client"
    await service.request_code(asked(3, "2001:db8:1:3::1"))


async def test_five_wrong_codes_kill_the_code_and_each_failure_is_counted(
    otp: RunningService, tap: EventTap, metrics_token: str
) -> None:
    """Five 401 invalid_code, then even the right code gets too_many_attempts."""
    await request_code(otp.url, PERSON)
    code = await next_code(tap, PERSON)

    for step in range(1, 6):
        status, answer = await verify_code(otp.url, PERSON, wrong(code, step))
        assert (status, answer["error"]) == (401, "invalid_code")
    status, answer = await verify_code(otp.url, PERSON, code)

    assert (status, answer["error"]) == (401, "too_many_attempts")
    samples = await scrape(otp.url, metrics_token)
    assert verification_failed(samples, "invalid_code") == 5
    assert verification_failed(samples, "too_many_attempts") == 1
    assert verification_failed(samples, "expired") == 0


async def verify_with_headers(
    url: str, email: str, code: str
) -> tuple[int, str, str | None]:
    """The status, error code and Retry-After of a verify."""
    status, answer, headers = await post(
        url, "/v1/otp/verify", {"email": email, "code": code}
    )
    return status, answer.get("error", ""), headers.get("Retry-After")


async def failures_stored(database_url: str) -> int:
    connection = await asyncpg.connect(database_url)
    try:
        return int(
            await connection.fetchval("SELECT count(*) FROM otp.failed_verifications")
        )
    finally:
        await connection.close()


async def test_ten_wrong_codes_across_three_codes_lock_the_address_for_an_hour(
    otp: RunningService,
    tap: EventTap,
    otp_clock: ManualClock,
    metrics_token: str,
    database_url: str,
    capfd: pytest.CaptureFixture[str],
) -> None:
    """A new code buys no new guesses: 4 + 4 + 2 wrong ones spend the budget.

    Then even the right code of a fresh code is refused, with Retry-After, until
    the first failures leave the hour; refusals meanwhile do not extend it.
    """
    start = otp_clock.now

    def at(seconds: float) -> None:
        otp_clock.now = start + timedelta(seconds=seconds)

    codes = []
    for nth, (seconds, guesses) in enumerate(((0, 4), (10, 4), (20, 2)), start=1):
        at(seconds)
        assert (await request_code(otp.url, PERSON))[0] == 202
        code = await next_code(tap, PERSON, nth)
        codes.append(code)
        for step in range(1, guesses + 1):
            status, error, _ = await verify_with_headers(
                otp.url, PERSON, wrong(code, step)
            )
            assert (status, error) == (401, "invalid_code")

    assert await verify_with_headers(otp.url, PERSON, codes[-1]) == (
        401,
        "too_many_attempts",
        "3580",
    )
    at(60)
    assert (await request_code(otp.url, PERSON))[0] == 202
    fresh = await next_code(tap, PERSON, 4)
    assert await verify_with_headers(otp.url, PERSON, fresh) == (
        401,
        "too_many_attempts",
        "3540",
    )
    status, error, _ = await verify_with_headers(otp.url, PERSON, wrong(fresh))
    assert (status, error) == (401, "too_many_attempts")
    assert await failures_stored(database_url) == 10

    at(3599)
    assert (await request_code(otp.url, PERSON))[0] == 202
    last = await next_code(tap, PERSON, 5)
    assert await verify_with_headers(otp.url, PERSON, last) == (
        401,
        "too_many_attempts",
        "1",
    )
    at(3600)  # the four failures of the first code have left the window
    assert (await verify_with_headers(otp.url, PERSON, last))[0] == 200

    samples = await scrape(otp.url, metrics_token)
    assert verification_failed(samples, "invalid_code") == 10
    assert verification_failed(samples, "too_many_attempts") == 4
    assert verification_failed(samples, "expired") == 0
    assert value(samples, "bitloot_otp_logins_total", role="user") == 1
    out, err = capfd.readouterr()
    (locked,) = [
        line for line in (out + err).splitlines() if "otp_address_locked" in line
    ]
    assert "warning" in locked and "p***@example.com" in locked
    assert PERSON not in out + err


async def test_concurrent_wrong_codes_over_two_instances_never_exceed_the_budget(
    start_otp: StartOtp,
    tap: EventTap,
    metrics_token: str,
    database_url: str,
) -> None:
    """Twenty racing guesses at a budget of three: three compared, 17 refused."""
    instances = [await start_otp(otp_failed_verifications_per_hour=3) for _ in range(2)]
    await request_code(instances[0].url, PERSON)
    code = await next_code(tap, PERSON)

    answers = await asyncio.gather(
        *(
            verify_code(instances[n % 2].url, PERSON, wrong(code, n + 1))
            for n in range(20)
        )
    )

    errors = sorted(answer["error"] for status, answer in answers if status == 401)
    assert errors == ["invalid_code"] * 3 + ["too_many_attempts"] * 17
    assert await failures_stored(database_url) == 3
    scraped = [await scrape(i.url, metrics_token) for i in instances]
    assert sum(verification_failed(s, "invalid_code") for s in scraped) == 3
    assert sum(verification_failed(s, "too_many_attempts") for s in scraped) == 17
    status, answer = await verify_code(instances[1].url, PERSON, code)
    assert (status, answer["error"]) == (401, "too_many_attempts")


async def test_a_code_expires_five_minutes_after_it_was_asked_for(
    otp: RunningService, tap: EventTap, otp_clock: ManualClock, metrics_token: str
) -> None:
    """At 4:59 a code still works; at 5:01 another one answers 401 expired."""
    await request_code(otp.url, PERSON)
    await request_code(otp.url, "late@example.com")
    in_time = await next_code(tap, PERSON)
    too_late = await next_code(tap, "late@example.com")

    otp_clock.advance(299)
    assert (await verify_code(otp.url, PERSON, in_time))[0] == 200
    otp_clock.advance(2)
    status, answer = await verify_code(otp.url, "late@example.com", too_late)

    assert (status, answer["error"]) == (401, "expired")
    samples = await scrape(otp.url, metrics_token)
    assert verification_failed(samples, "expired") == 1
    assert verification_failed(samples, "invalid_code") == 0


async def test_a_code_logs_in_once(otp: RunningService, tap: EventTap) -> None:
    """The second use of a code that worked is a wrong code."""
    await request_code(otp.url, PERSON)
    code = await next_code(tap, PERSON)
    assert (await verify_code(otp.url, PERSON, code))[0] == 200

    status, answer = await verify_code(otp.url, PERSON, code)

    assert (status, answer["error"]) == (401, "invalid_code")


async def test_a_new_request_replaces_the_earlier_code(
    otp: RunningService, tap: EventTap
) -> None:
    """Only the latest code works, and its wrong tries start again from zero."""
    await request_code(otp.url, PERSON)
    earlier = await next_code(tap, PERSON)
    for step in range(1, 5):
        await verify_code(otp.url, PERSON, wrong(earlier, step))
    await request_code(otp.url, PERSON)
    latest = await next_code(tap, PERSON, 2)
    if latest == earlier:
        pytest.skip("the two random codes happened to be equal")

    status, answer = await verify_code(otp.url, PERSON, earlier)
    assert (status, answer["error"]) == (401, "invalid_code")
    assert (await verify_code(otp.url, PERSON, latest))[0] == 200


async def test_the_first_login_registers_the_user_once_even_when_verifies_race(
    otp: RunningService, tap: EventTap, amqp_url: str, database_url: str
) -> None:
    """Five copies of one verify: one token; a later login registers nothing."""
    await request_code(otp.url, PERSON)
    code = await next_code(tap, PERSON)

    answers = await asyncio.gather(
        *(verify_code(otp.url, PERSON, code) for _ in range(5))
    )
    assert sorted(status for status, _ in answers) == [200] + [401] * 4
    await log_in(otp, tap, PERSON, nth=2)

    events = await settled(tap, amqp_url, database_url)
    registered = [e for e in events if e["type"] == "user.registered"]
    assert len(registered) == 1
    assert registered[0]["data"]["email"] == PERSON
    assert len(codes_sent(events, PERSON)) == 2


async def test_the_answer_to_a_request_does_not_tell_whether_the_address_is_known(
    otp: RunningService, tap: EventTap, otp_clock: ManualClock
) -> None:
    """A user's address and a never-seen one get the same status and body."""
    await log_in(otp, tap, PERSON)

    known = await request_code(otp.url, PERSON)
    unknown = await request_code(otp.url, "stranger@example.com")

    assert known[:2] == unknown[:2] == (202, {"expires_in": 300})


async def test_an_administrators_token_reads_another_services_metrics(
    otp: RunningService, tap: EventTap, start_ingest: StartIngest
) -> None:
    """webhook-ingest takes the admin's token at /metrics and refuses a user's."""
    ingest = await start_ingest()
    admin_token = await log_in(otp, tap, ADMIN)
    user_token = await log_in(otp, tap, PERSON)

    async with aiohttp.ClientSession() as session:
        statuses = []
        for token in (admin_token, user_token):
            async with session.get(
                f"{ingest.url}/metrics", headers={"Authorization": f"Bearer {token}"}
            ) as response:
                statuses.append(response.status)

    assert statuses == [200, 401]
    samples = await scrape(otp.url, admin_token)
    assert value(samples, "bitloot_otp_logins_total", role="admin") == 1
    assert value(samples, "bitloot_otp_logins_total", role="user") == 1


@pytest.mark.parametrize(
    "body",
    [
        {"email": "not-an-address"},
        {"email": "two@@example.com"},
        {"email": ""},
        {"email": 42},
        {},
    ],
)
async def test_a_request_without_a_valid_email_is_refused_with_422(
    otp: RunningService, body: dict[str, object]
) -> None:
    """No code is issued for something that is not an address."""
    status, answer, _ = await post(otp.url, "/v1/otp/request", body)

    assert (status, answer["error"]) == (422, "invalid_email")


async def test_a_verify_with_a_malformed_email_or_code_is_refused_with_422(
    otp: RunningService,
) -> None:
    """Neither a bad address nor a code that is not six digits counts as a try."""
    bad_email = await post(otp.url, "/v1/otp/verify", {"email": "x", "code": "123456"})
    bad_code = await post(otp.url, "/v1/otp/verify", {"email": PERSON, "code": "12a"})

    assert (bad_email[0], bad_email[1]["error"]) == (422, "invalid_email")
    assert (bad_code[0], bad_code[1]["error"]) == (422, "invalid_request")


@pytest.mark.parametrize("raw", [b"{not json", b'["a list"]', b""])
async def test_a_body_that_is_not_a_json_object_is_refused_with_400(
    otp: RunningService, raw: bytes
) -> None:
    """Both endpoints answer invalid_json before reading any field."""
    for path in ("/v1/otp/request", "/v1/otp/verify"):
        status, answer, _ = await post(otp.url, path, None, raw=raw)
        assert (status, answer["error"]) == (400, "invalid_json")


async def test_every_otp_series_is_present_at_zero_from_start_up(
    otp: RunningService, metrics_token: str
) -> None:
    """Dashboards and alerts see the first refusal as an increase from zero."""
    samples = await scrape(otp.url, metrics_token)

    assert rate_limited(samples) == 0
    for reason in ("invalid_code", "expired", "too_many_attempts"):
        assert verification_failed(samples, reason) == 0
    for route, method, status in [
        ("/v1/otp/request", "POST", "202"),
        ("/v1/otp/request", "POST", "429"),
        ("/v1/otp/request", "POST", "422"),
        ("/v1/otp/verify", "POST", "200"),
        ("/v1/otp/verify", "POST", "401"),
    ]:
        labels = {"route": route, "method": method, "status": status}
        assert value(samples, "bitloot_http_requests_total", **labels) == 0
    for event_type in ("otp.issued", "email.otp.requested", "user.registered"):
        labels = {"type": event_type, "outcome": "ok"}
        assert value(samples, "bitloot_events_published_total", **labels) == 0


async def test_old_requests_and_long_expired_codes_are_swept(
    otp: RunningService, tap: EventTap, otp_clock: ManualClock, database_url: str
) -> None:
    """What no limit and no verdict reads any more leaves the tables."""
    await request_code(otp.url, PERSON)
    code = await next_code(tap, PERSON)
    await verify_code(otp.url, PERSON, wrong(code))
    service = otp.runtime.app[OTP_SERVICE]

    assert await service.sweep() == Swept(requests=0, failures=0, codes=0)
    otp_clock.advance(60)
    assert await service.sweep() == Swept(requests=1, failures=0, codes=0)
    otp_clock.advance(3600 - 60)  # the wrong code has left the failure window
    assert await service.sweep() == Swept(requests=0, failures=1, codes=0)
    otp_clock.advance(300)  # an hour after the code expired
    assert await service.sweep() == Swept(requests=0, failures=0, codes=1)


async def test_no_log_line_holds_a_code_a_token_or_a_whole_address(
    otp: RunningService, tap: EventTap, capfd: pytest.CaptureFixture[str]
) -> None:
    """Issue, refusal and login are logged with a masked address only."""
    token = await log_in(otp, tap, PERSON)
    await request_code(otp.url, PERSON)
    code = await next_code(tap, PERSON, 2)
    await verify_code(otp.url, PERSON, wrong(code))

    out, err = capfd.readouterr()
    logs = out + err
    assert "otp_issued" in logs and "otp_refused" in logs and "otp_login" in logs
    assert "p***@example.com" in logs
    for secret in (PERSON, token, code, *codes_sent(tap.envelopes(), PERSON)):
        assert secret not in logs

"""webhook-ingest over real HTTP, PostgreSQL and RabbitMQ: what providers see."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from shared.auth import METRICS_SCOPE, TokenIssuer
from shared.service import RunningService
from tests.conftest import KINGUIN_SECRET, NOWPAYMENTS_SECRET, StartIngest
from tests.support.events import EventTap
from tests.support.ipn import ipn_body, signed_headers
from tests.support.metrics import scrape, value
from tests.support.webhooks import (
    duplicates,
    fetch_rows,
    invalid_hmac,
    post,
    stored_deliveries,
)

VECTORS_PATH = Path(__file__).resolve().parent.parent / "data/nowpayments/vectors.json"
VECTORS: list[dict[str, Any]] = json.loads(VECTORS_PATH.read_text(encoding="utf-8"))

IPN = "/webhooks/nowpayments/ipn"
KINGUIN = "/webhooks/kinguin"
BODY_LIMIT = 64 * 1024
OVERSIZED = 70_000
NOWPAYMENTS_REQUIRED = ("payment_id", "payment_status")
PROVIDERS = ("nowpayments", "kinguin")
REASONS = ("missing_secret", "verification_failed", "exception")
KINGUIN_ORDER = {
    "orderId": "KG-ORD-000123",
    "status": "completed",
    "updatedAt": "2024-05-01T12:00:00+00:00",
}


@pytest.fixture
async def session() -> AsyncIterator[aiohttp.ClientSession]:
    async with aiohttp.ClientSession() as client:
        yield client


def kinguin_headers(
    secret: str | None = KINGUIN_SECRET, event_name: str | None = "order.status"
) -> dict[str, str]:
    headers = {"Content-Type": "application/json"}
    if secret is not None:
        headers["X-Event-Secret"] = secret
    if event_name is not None:
        headers["X-Event-Name"] = event_name
    return headers


async def outbox_rows(database_url: str) -> int:
    rows = await fetch_rows(database_url, "SELECT id FROM webhook_ingest.outbox")
    return len(rows)


def vector_has_required_fields(vector: dict[str, Any]) -> bool:
    body = json.loads(vector["body"])
    return all(body.get(name) not in (None, "") for name in NOWPAYMENTS_REQUIRED)


async def chunks(payload: bytes, size: int = 8192) -> AsyncIterator[bytes]:
    """Stream a body without Content-Length (chunked transfer encoding)."""
    for start in range(0, len(payload), size):
        yield payload[start : start + size]


# --- NOWPayments: the Node.js vectors, raw over HTTP -------------------------


def test_the_vector_file_has_both_acceptable_and_incomplete_ipns() -> None:
    """The vectors include IPNs with and without payment_id/payment_status."""
    complete = {v["name"] for v in VECTORS if vector_has_required_fields(v)}
    assert complete == {"full_ipn_finished", "partially_paid", "non_ascii_secret"}
    assert len({v["secret"] for v in VECTORS}) == 2


async def test_every_node_vector_verifies_over_http_under_both_header_names(
    start_ingest: StartIngest,
    session: aiohttp.ClientSession,
    database_url: str,
    amqp_url: str,
) -> None:
    """Vectors verify raw: complete ones are accepted, the rest are missing_fields."""
    instances: dict[str, RunningService] = {}
    for secret in dict.fromkeys(v["secret"] for v in VECTORS):
        instances[secret] = await start_ingest(nowpayments_ipn_secret=secret)

    complete: list[dict[str, Any]] = []
    async with EventTap(amqp_url, ["webhook.nowpayments.received"]) as tap:
        for vector in VECTORS:
            url = instances[vector["secret"]].url + IPN
            raw = vector["body"].encode("utf-8")
            first = await post(
                session, url, raw, {"x-nowpayments-sig": vector["signature"]}
            )
            again = await post(
                session, url, raw, {"x-nowpayments-signature": vector["signature"]}
            )
            if vector_has_required_fields(vector):
                complete.append(vector)
                assert first == (200, {"status": "accepted"}), vector["name"]
                assert again == (200, {"status": "duplicate"}), vector["name"]
            else:
                # 400, not 401: the signature verified before the fields were read.
                for status, answer in (first, again):
                    assert status == 400, (vector["name"], answer)
                    assert answer["error"] == "missing_fields", vector["name"]
                    assert "payment_id" in answer["detail"], vector["name"]
        envelopes = await tap.wait_for(len(complete))

    rows = await stored_deliveries(database_url)
    assert sorted(bytes(row["raw_body"]) for row in rows) == sorted(
        v["body"].encode("utf-8") for v in complete
    )
    assert {row["provider"] for row in rows} == {"nowpayments"}
    published = {e["data"]["payment_id"]: e["data"]["body"] for e in envelopes}
    assert published == {
        str(json.loads(v["body"])["payment_id"]): json.loads(v["body"])
        for v in complete
    }


# --- NOWPayments: refusals ----------------------------------------------------


async def test_a_tampered_amount_is_refused_counted_and_not_stored(
    start_ingest: StartIngest,
    session: aiohttp.ClientSession,
    database_url: str,
    metrics_token: str,
) -> None:
    """One changed digit of actually_paid gives 401 invalid_signature."""
    service = await start_ingest()
    body = ipn_body(actually_paid=0.00413)
    headers = signed_headers(NOWPAYMENTS_SECRET, body)
    tampered = body.replace(b'"actually_paid": 0.00413', b'"actually_paid": 0.00414')
    assert tampered != body

    status, answer = await post(session, service.url + IPN, tampered, headers)

    assert status == 401
    assert answer["error"] == "invalid_signature"
    assert answer["detail"]
    samples = await scrape(service.url, metrics_token)
    assert invalid_hmac(samples, "nowpayments", "verification_failed") == 1
    assert invalid_hmac(samples, "nowpayments", "missing_secret") == 0
    assert await stored_deliveries(database_url) == []
    assert await outbox_rows(database_url) == 0


async def test_an_ipn_without_a_signature_header_is_refused_and_counted(
    start_ingest: StartIngest,
    session: aiohttp.ClientSession,
    database_url: str,
    metrics_token: str,
) -> None:
    """No x-nowpayments-sig header gives 401 and counts verification_failed."""
    service = await start_ingest()
    body = ipn_body()

    status, answer = await post(
        session, service.url + IPN, body, {"Content-Type": "application/json"}
    )

    assert status == 401
    assert answer["error"] == "invalid_signature"
    assert "x-nowpayments-sig" in answer["detail"]
    samples = await scrape(service.url, metrics_token)
    assert invalid_hmac(samples, "nowpayments", "verification_failed") == 1
    assert await stored_deliveries(database_url) == []


async def test_a_signature_made_with_another_secret_is_refused(
    start_ingest: StartIngest, session: aiohttp.ClientSession, database_url: str
) -> None:
    """A body signed with a different secret gives 401 invalid_signature."""
    service = await start_ingest()
    body = ipn_body()

    status, answer = await post(
        session,
        service.url + IPN,
        body,
        signed_headers(NOWPAYMENTS_SECRET + "-other", body),
    )

    assert (status, answer["error"]) == (401, "invalid_signature")
    assert await stored_deliveries(database_url) == []


async def test_an_uppercase_signature_with_whitespace_is_accepted(
    start_ingest: StartIngest, session: aiohttp.ClientSession
) -> None:
    """Hex case and surrounding whitespace of the header do not matter."""
    service = await start_ingest()
    body = ipn_body()
    signature = signed_headers(NOWPAYMENTS_SECRET, body)["x-nowpayments-sig"]

    answer = await post(
        session,
        service.url + IPN,
        body,
        {"x-nowpayments-sig": f" {signature.upper()} "},
    )

    assert answer == (200, {"status": "accepted"})


@pytest.mark.parametrize("unset", [None, ""], ids=["none", "empty"])
async def test_an_unset_secret_answers_503_missing_secret_for_both_providers(
    start_ingest: StartIngest,
    session: aiohttp.ClientSession,
    database_url: str,
    metrics_token: str,
    unset: str | None,
) -> None:
    """Without a configured secret both routes answer 503 and count missing_secret."""
    service = await start_ingest(
        nowpayments_ipn_secret=unset, kinguin_webhook_secret=unset
    )
    body = ipn_body()

    ipn = await post(
        session, service.url + IPN, body, signed_headers(NOWPAYMENTS_SECRET, body)
    )
    kinguin = await post(
        session,
        service.url + KINGUIN,
        json.dumps(KINGUIN_ORDER),
        kinguin_headers(),
    )

    for status, answer in (ipn, kinguin):
        assert status == 503
        assert answer["error"] == "missing_secret"
        assert answer["detail"]
    samples = await scrape(service.url, metrics_token)
    for provider in PROVIDERS:
        assert invalid_hmac(samples, provider, "missing_secret") == 1
        assert invalid_hmac(samples, provider, "verification_failed") == 0
    assert await stored_deliveries(database_url) == []


@pytest.mark.parametrize(
    "raw",
    [
        pytest.param(b"this is not json", id="not-json"),
        pytest.param(b"", id="empty"),
        pytest.param(b"[1, 2, 3]", id="array"),
        pytest.param(b'{"payment_id": 1, "payment_status": "x", "a": NaN}', id="nan"),
        pytest.param(b'{"payment_id": 1, "payment_status": "x"} x', id="trailing"),
    ],
)
async def test_a_body_json_parse_rejects_is_answered_400_invalid_json(
    start_ingest: StartIngest,
    session: aiohttp.ClientSession,
    database_url: str,
    raw: bytes,
) -> None:
    """A non-JSON, non-object or NaN body gives 400 invalid_json."""
    service = await start_ingest()

    status, answer = await post(
        session, service.url + IPN, raw, {"x-nowpayments-sig": "0" * 128}
    )

    assert status == 400
    assert answer["error"] == "invalid_json"
    assert answer["detail"]
    assert await stored_deliveries(database_url) == []


async def test_a_signed_ipn_without_payment_status_is_400_missing_fields(
    start_ingest: StartIngest,
    session: aiohttp.ClientSession,
    database_url: str,
    metrics_token: str,
) -> None:
    """A correctly signed body lacking payment_status gives 400 missing_fields."""
    service = await start_ingest()
    body = json.dumps({"payment_id": 77, "actually_paid": 1.5}).encode()

    status, answer = await post(
        session, service.url + IPN, body, signed_headers(NOWPAYMENTS_SECRET, body)
    )

    assert status == 400
    assert answer["error"] == "missing_fields"
    assert "payment_status" in answer["detail"]
    assert await stored_deliveries(database_url) == []
    samples = await scrape(service.url, metrics_token)
    for reason in REASONS:
        assert invalid_hmac(samples, "nowpayments", reason) == 0


@pytest.mark.parametrize("payment_id", ["a\u0000b", "", {"id": 1}, True, "x" * 200])
async def test_a_signed_ipn_whose_payment_id_is_no_id_is_400_invalid_field(
    start_ingest: StartIngest,
    session: aiohttp.ClientSession,
    database_url: str,
    payment_id: Any,
) -> None:
    """A payment id the database could not hold is refused, not a 503 forever."""
    service = await start_ingest()
    body = json.dumps({"payment_id": payment_id, "payment_status": "waiting"}).encode()

    status, answer = await post(
        session, service.url + IPN, body, signed_headers(NOWPAYMENTS_SECRET, body)
    )

    assert status == 400
    assert answer["error"] in {"invalid_field", "missing_fields"}
    assert "payment_id" in answer["detail"]
    assert await stored_deliveries(database_url) == []


@pytest.mark.parametrize("chunked", [False, True], ids=["content-length", "chunked"])
@pytest.mark.parametrize("route", [IPN, KINGUIN])
async def test_an_oversized_body_is_413_and_nothing_is_stored(
    start_ingest: StartIngest,
    session: aiohttp.ClientSession,
    database_url: str,
    route: str,
    chunked: bool,
) -> None:
    """A body over 64 KiB gives 413 body_too_large, announced or streamed."""
    service = await start_ingest()
    padding = "x" * (OVERSIZED - 200)
    if route == IPN:
        payload = ipn_body(padding=padding)
        headers = signed_headers(NOWPAYMENTS_SECRET, payload)
    else:
        payload = json.dumps({**KINGUIN_ORDER, "padding": padding}).encode()
        headers = kinguin_headers()
    assert len(payload) > BODY_LIMIT

    body: Any = chunks(payload) if chunked else payload
    async with session.post(service.url + route, data=body, headers=headers) as resp:
        if chunked:
            assert "Content-Length" not in resp.request_info.headers
            assert resp.request_info.headers["Transfer-Encoding"] == "chunked"
        assert resp.status == 413
        answer = await resp.json()

    assert answer["error"] == "body_too_large"
    assert str(BODY_LIMIT) in answer["detail"]
    assert await stored_deliveries(database_url) == []


async def test_a_body_just_under_the_limit_is_accepted(
    start_ingest: StartIngest, session: aiohttp.ClientSession, database_url: str
) -> None:
    """An IPN of nearly 64 KiB is still accepted and stored byte for byte."""
    service = await start_ingest()
    body = ipn_body(padding="")
    body = ipn_body(padding="y" * (BODY_LIMIT - len(body)))
    assert len(body) == BODY_LIMIT

    answer = await post(
        session, service.url + IPN, body, signed_headers(NOWPAYMENTS_SECRET, body)
    )

    assert answer == (200, {"status": "accepted"})
    rows = await stored_deliveries(database_url)
    assert [bytes(row["raw_body"]) for row in rows] == [body]


# --- Kinguin ------------------------------------------------------------------


async def test_a_kinguin_order_status_is_accepted_and_published(
    start_ingest: StartIngest,
    session: aiohttp.ClientSession,
    database_url: str,
    amqp_url: str,
) -> None:
    """The right secret gives 200 accepted and one webhook.kinguin.received."""
    service = await start_ingest()
    raw = json.dumps(KINGUIN_ORDER).encode()

    async with EventTap(amqp_url, ["webhook.kinguin.received"]) as tap:
        answer = await post(
            session,
            service.url + KINGUIN,
            raw,
            {**kinguin_headers(), "X-Request-ID": "kg-1"},
        )
        assert answer == (200, {"status": "accepted"})
        envelopes = await tap.wait_for(1)

    envelope = envelopes[0]
    assert envelope["type"] == "webhook.kinguin.received"
    assert envelope["producer"] == "webhook-ingest"
    assert envelope["correlation_id"] == "kg-1"
    assert envelope["data"]["event_name"] == "order.status"
    assert envelope["data"]["body"] == KINGUIN_ORDER
    rows = await stored_deliveries(database_url)
    assert [(r["provider"], r["event_name"], r["reference"]) for r in rows] == [
        ("kinguin", "order.status", "KG-ORD-000123")
    ]
    assert bytes(rows[0]["raw_body"]) == raw


@pytest.mark.parametrize(
    "secret", ["wrong-secret", "", None], ids=["wrong", "empty", "missing"]
)
async def test_a_kinguin_webhook_with_a_wrong_secret_is_refused_and_counted(
    start_ingest: StartIngest,
    session: aiohttp.ClientSession,
    database_url: str,
    metrics_token: str,
    secret: str | None,
) -> None:
    """A wrong or absent X-Event-Secret gives 401 and counts verification_failed."""
    service = await start_ingest()

    status, answer = await post(
        session,
        service.url + KINGUIN,
        json.dumps(KINGUIN_ORDER),
        kinguin_headers(secret=secret),
    )

    assert status == 401
    assert answer["error"] == "invalid_signature"
    samples = await scrape(service.url, metrics_token)
    assert invalid_hmac(samples, "kinguin", "verification_failed") == 1
    assert invalid_hmac(samples, "nowpayments", "verification_failed") == 0
    assert await stored_deliveries(database_url) == []


async def test_kinguin_bad_requests_are_answered_400(
    start_ingest: StartIngest, session: aiohttp.ClientSession, database_url: str
) -> None:
    """No X-Event-Name, a non-object body or no orderId each give a 400."""
    service = await start_ingest()
    url = service.url + KINGUIN
    incomplete = {k: v for k, v in KINGUIN_ORDER.items() if k != "orderId"}

    no_name = await post(
        session, url, json.dumps(KINGUIN_ORDER), kinguin_headers(event_name=None)
    )
    blank_name = await post(
        session, url, json.dumps(KINGUIN_ORDER), kinguin_headers(event_name="  ")
    )
    not_json = await post(session, url, b"orderId=1", kinguin_headers())
    array = await post(session, url, b"[]", kinguin_headers())
    no_order = await post(session, url, json.dumps(incomplete), kinguin_headers())

    for status, answer in (no_name, blank_name):
        assert status == 400
        assert answer["error"] == "missing_event_name"
        assert "X-Event-Name" in answer["detail"]
    for status, answer in (not_json, array):
        assert (status, answer["error"]) == (400, "invalid_json")
    assert no_order[0] == 400
    assert no_order[1]["error"] == "missing_fields"
    assert "orderId" in no_order[1]["detail"]
    assert await stored_deliveries(database_url) == []


async def test_a_kinguin_body_with_nan_is_400_invalid_json(
    start_ingest: StartIngest, session: aiohttp.ClientSession, database_url: str
) -> None:
    """NaN is not JSON, so a Kinguin body containing it gives 400 invalid_json."""
    service = await start_ingest()
    raw = b'{"orderId": "KG-1", "status": "completed", "updatedAt": "t", "x": NaN}'

    status, answer = await post(session, service.url + KINGUIN, raw, kinguin_headers())

    assert (status, answer.get("error")) == (400, "invalid_json")
    assert await stored_deliveries(database_url) == []


async def test_a_repeated_kinguin_delivery_is_a_counted_duplicate(
    start_ingest: StartIngest,
    session: aiohttp.ClientSession,
    database_url: str,
    metrics_token: str,
) -> None:
    """The same Kinguin delivery twice gives accepted, then duplicate, one row."""
    service = await start_ingest()
    url = service.url + KINGUIN

    first = await post(session, url, json.dumps(KINGUIN_ORDER), kinguin_headers())
    reordered = dict(reversed(list(KINGUIN_ORDER.items())))
    again = await post(session, url, json.dumps(reordered, indent=2), kinguin_headers())
    other_event = await post(
        session, url, json.dumps(KINGUIN_ORDER), kinguin_headers(event_name="other")
    )

    assert first == (200, {"status": "accepted"})
    assert again == (200, {"status": "duplicate"})
    assert other_event == (200, {"status": "accepted"})
    rows = await stored_deliveries(database_url)
    assert sorted(r["event_name"] for r in rows) == ["order.status", "other"]
    samples = await scrape(service.url, metrics_token)
    assert duplicates(samples, "kinguin") == 1
    assert duplicates(samples, "nowpayments") == 0


# --- NOWPayments: bodies the signature rules allow -------------------------


async def test_a_signed_ipn_with_a_lone_surrogate_is_accepted(
    start_ingest: StartIngest, session: aiohttp.ClientSession, amqp_url: str
) -> None:
    """JSON.parse accepts \\ud800, NOWPayments can sign it, so it is accepted."""
    service = await start_ingest()
    body = ipn_body(payment_id=91, order_description="x\ud800y")
    assert b"\\ud800" in body

    async with EventTap(amqp_url, ["webhook.nowpayments.received"]) as tap:
        answer = await post(
            session, service.url + IPN, body, signed_headers(NOWPAYMENTS_SECRET, body)
        )
        assert answer == (200, {"status": "accepted"})
        envelopes = await tap.wait_for(1, timeout=5)
    assert envelopes[0]["data"]["body"]["order_description"] == "x\ud800y"


# --- Routing, metrics, health ---------------------------------------------


async def test_unknown_routes_and_wrong_methods_answer_json_errors(
    start_ingest: StartIngest, session: aiohttp.ClientSession
) -> None:
    """An unknown path is 404 not_found; GET on a webhook route is 405."""
    service = await start_ingest()

    for path in ("/nope", "/webhooks/nowpayments", "/webhooks/kinguin/extra"):
        async with session.post(service.url + path, data=b"{}") as response:
            assert response.status == 404, path
            assert response.content_type == "application/json"
            answer = await response.json()
        assert answer["error"] == "not_found"
        assert "detail" in answer

    for path in (IPN, KINGUIN):
        async with session.get(service.url + path) as response:
            assert response.status == 405, path
            assert response.content_type == "application/json"
            assert "POST" in response.headers["Allow"]
            answer = await response.json()
        assert answer["error"] == "method_not_allowed"
        assert "detail" in answer


async def test_metrics_refuse_missing_wrong_scope_expired_and_garbage_tokens(
    start_ingest: StartIngest,
    session: aiohttp.ClientSession,
    token_issuer: TokenIssuer,
) -> None:
    """/metrics answers 401 unless the bearer token is valid with metrics:read."""
    service = await start_ingest()
    refused = {
        "none": {},
        "not bearer": {"Authorization": "Basic dXNlcjpwYXNz"},
        "empty bearer": {"Authorization": "Bearer "},
        "garbage": {"Authorization": "Bearer not.a.jwt"},
        "other scope": {
            "Authorization": f"Bearer {token_issuer.mint('x', ['other'], 60)}"
        },
        "expired": {
            "Authorization": f"Bearer {token_issuer.mint('x', [METRICS_SCOPE], -10)}"
        },
    }
    for name, headers in refused.items():
        async with session.get(service.url + "/metrics", headers=headers) as response:
            assert response.status == 401, name
            assert response.headers["WWW-Authenticate"].startswith("Bearer"), name
            answer = await response.json()
        assert answer["error"] == "unauthorized", name
        assert answer["detail"], name


async def test_metrics_show_every_provider_and_reason_at_zero_from_start_up(
    start_ingest: StartIngest, session: aiohttp.ClientSession, metrics_token: str
) -> None:
    """A fresh instance exports all six invalid-HMAC series and duplicates at 0."""
    service = await start_ingest()

    async with session.get(
        service.url + "/metrics", headers={"Authorization": f"Bearer {metrics_token}"}
    ) as response:
        assert response.status == 200
        assert response.content_type == "text/plain"
        text = await response.text()
    assert "# TYPE bitloot_invalid_hmac_count_total counter" in text or (
        "# TYPE bitloot_invalid_hmac_count counter" in text
    )

    samples = await scrape(service.url, metrics_token)
    hmac_series = {
        (dict(labels)["provider"], dict(labels)["reason"]): sample
        for (name, labels), sample in samples.items()
        if name == "bitloot_invalid_hmac_count_total"
    }
    assert hmac_series == {(p, r): 0.0 for p in PROVIDERS for r in REASONS}
    for provider in PROVIDERS:
        assert duplicates(samples, provider) == 0


async def test_healthz_and_readyz_report_the_database_and_broker(
    start_ingest: StartIngest, session: aiohttp.ClientSession
) -> None:
    """/healthz is 200 ok; /readyz is 200 ready with database and broker checks."""
    service = await start_ingest()

    async with session.get(service.url + "/healthz") as response:
        assert response.status == 200
        assert await response.json() == {"status": "ok"}
    async with session.get(service.url + "/readyz") as response:
        assert response.status == 200
        ready = await response.json()
    assert ready["status"] == "ready"
    assert {"database", "broker"} <= set(ready["checks"])


async def test_an_invented_http_method_is_counted_as_other(
    start_ingest: StartIngest, session: aiohttp.ClientSession, metrics_token: str
) -> None:
    """Clients cannot create metric series by sending made-up methods."""
    service = await start_ingest()

    async with session.request("PROPFIND", f"{service.url}/nowhere") as response:
        assert response.status == 404

    samples = await scrape(service.url, metrics_token)
    assert (
        value(
            samples,
            "bitloot_http_requests_total",
            route="unmatched",
            method="other",
            status="404",
        )
        == 1
    )
    assert not any("PROPFIND" in str(labels) for _, labels in samples)

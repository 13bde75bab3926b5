"""Unit tests for NOWPayments IPN signatures against vectors produced by Node.js."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from services.webhook_ingest.signature import (
    MalformedBodyError,
    canonical_json,
    nowpayments_signature,
    parse_ipn_body,
    verify_kinguin_secret,
    verify_nowpayments_signature,
)

VECTORS_PATH = Path(__file__).resolve().parent.parent / "data/nowpayments/vectors.json"
VECTORS: list[dict[str, Any]] = json.loads(VECTORS_PATH.read_text(encoding="utf-8"))
VECTORS_BY_NAME = {vector["name"]: vector for vector in VECTORS}


def _body(vector: dict[str, Any]) -> bytes:
    return str(vector["body"]).encode("utf-8")


@pytest.mark.parametrize("vector", VECTORS, ids=[v["name"] for v in VECTORS])
def test_canonical_string_matches_the_node_vector(vector: dict[str, Any]) -> None:
    """The canonical JSON equals what JSON.stringify(sortObject(...)) produced."""
    assert canonical_json(parse_ipn_body(_body(vector))) == vector["canonical"]


@pytest.mark.parametrize("vector", VECTORS, ids=[v["name"] for v in VECTORS])
def test_signature_matches_the_node_vector(vector: dict[str, Any]) -> None:
    """The HMAC-SHA512 hex equals the signature Node.js computed."""
    assert nowpayments_signature(vector["secret"], _body(vector)) == vector["signature"]
    assert verify_nowpayments_signature(
        vector["secret"], _body(vector), vector["signature"]
    )


def test_vectors_cover_the_required_cases() -> None:
    """The vector file contains every case the signature rules depend on."""
    assert {
        "full_ipn_finished",
        "partially_paid",
        "number_formats",
        "non_ascii_text",
        "control_chars_and_separators",
        "integer_like_keys",
        "arrays_and_empties",
        "nulls_and_booleans",
        "deep_nesting",
    } <= VECTORS_BY_NAME.keys()


def test_a_body_with_one_changed_amount_byte_fails_verification() -> None:
    """Changing one digit of an amount invalidates the original signature."""
    vector = VECTORS_BY_NAME["full_ipn_finished"]
    body = _body(vector)
    tampered = body.replace(b'"actually_paid": 0.00412', b'"actually_paid": 0.00413')
    assert tampered != body
    assert len(tampered) == len(body)
    assert not verify_nowpayments_signature(
        vector["secret"], tampered, vector["signature"]
    )


def test_an_uppercase_hex_header_with_whitespace_verifies() -> None:
    """Header hex case and surrounding whitespace do not matter."""
    vector = VECTORS_BY_NAME["full_ipn_finished"]
    header = f"  {vector['signature'].upper()}\r\n"
    assert verify_nowpayments_signature(vector["secret"], _body(vector), header)


def test_a_wrong_secret_fails_verification() -> None:
    """A signature made with another secret is rejected."""
    vector = VECTORS_BY_NAME["full_ipn_finished"]
    assert not verify_nowpayments_signature(
        vector["secret"] + "x", _body(vector), vector["signature"]
    )


def test_a_truncated_or_non_hex_header_fails_verification() -> None:
    """Headers that are not the full expected hex digest are rejected."""
    vector = VECTORS_BY_NAME["full_ipn_finished"]
    body = _body(vector)
    assert not verify_nowpayments_signature(
        vector["secret"], body, vector["signature"][:-2]
    )
    assert not verify_nowpayments_signature(vector["secret"], body, "")
    assert not verify_nowpayments_signature(vector["secret"], body, "é" * 128)


@pytest.mark.parametrize(
    "raw",
    [
        pytest.param(b"not json", id="not-json"),
        pytest.param(b"", id="empty"),
        pytest.param(b'{"amount": NaN}', id="nan"),
        pytest.param(b'{"amount": Infinity}', id="infinity"),
        pytest.param(b'{"amount": -Infinity}', id="minus-infinity"),
        pytest.param(b"[1, 2, 3]", id="top-level-array"),
        pytest.param(b'"just a string"', id="top-level-string"),
        pytest.param(b"null", id="top-level-null"),
        pytest.param(b'{"name": "caf\xe9"}', id="invalid-utf8"),
        pytest.param(b'{"s": "\xed\xa0\x80"}', id="utf8-encoded-surrogate"),
        pytest.param(b'{"a": 1} x', id="trailing-garbage"),
        pytest.param(b'{"a": 01}', id="leading-zero"),
        pytest.param(b'{"a": "raw\ttab"}', id="raw-control-character"),
        pytest.param(b'\xef\xbb\xbf{"a": 1}', id="byte-order-mark"),
        pytest.param(b"{'a': 1}", id="single-quotes"),
        pytest.param(b'{"a": [1, 2,]}', id="trailing-comma"),
    ],
)
def test_bodies_json_parse_rejects_raise_malformed_body_error(raw: bytes) -> None:
    """Bodies JSON.parse rejects, and non-object bodies, raise MalformedBodyError."""
    with pytest.raises(MalformedBodyError):
        parse_ipn_body(raw)
    with pytest.raises(MalformedBodyError):
        verify_nowpayments_signature("secret", raw, "00")


def test_absurdly_deep_nesting_raises_malformed_body_error() -> None:
    """Nesting deep enough to exhaust recursion is reported as a malformed body."""
    depth = 100_000
    raw = b'{"a":' + b"[" * depth + b"]" * depth + b"}"
    with pytest.raises(MalformedBodyError):
        parse_ipn_body(raw)


def test_canonical_json_handles_nesting_deeper_than_the_recursion_limit() -> None:
    """The canonical walk is iterative, so deep but parsed values still serialise."""
    value: object = None
    for _ in range(5_000):
        value = [value]
    expected = '{"0":' * 5_000 + "null" + "}" * 5_000
    assert canonical_json({"a": value}) == '{"a":' + expected + "}"


def test_all_numbers_parse_as_floats() -> None:
    """Integers are parsed as doubles, as JSON.parse does."""
    parsed = parse_ipn_body(b'{"int": 12345678901234567890, "small": 170}')
    assert parsed == {"int": 12345678901234567890.0, "small": 170.0}
    assert all(isinstance(number, float) for number in parsed.values())


def test_python_json_dumps_gives_a_different_canonical_string_for_1e_minus_7() -> None:
    """Python's json.dumps(sort_keys=True) is not a substitute: it prints 1e-07."""
    vector = VECTORS_BY_NAME["number_formats"]
    python_canonical = json.dumps(
        json.loads(vector["body"], parse_constant=lambda _: None),
        sort_keys=True,
        separators=(",", ":"),
        ensure_ascii=False,
    )
    assert "1e-07" in python_canonical
    assert python_canonical != vector["canonical"]
    assert '"tiny":1e-7' in vector["canonical"]
    assert canonical_json(parse_ipn_body(_body(vector))) == vector["canonical"]


def test_kinguin_secret_matches_when_equal() -> None:
    """The same Kinguin secret is accepted, including non-ASCII text."""
    assert verify_kinguin_secret("kinguin-s3cret", "kinguin-s3cret")
    assert verify_kinguin_secret("sécret-🔑", "sécret-🔑")


def test_kinguin_secret_mismatch_is_rejected() -> None:
    """A different, truncated or empty Kinguin secret is rejected."""
    assert not verify_kinguin_secret("kinguin-s3cret", "kinguin-s3creT")
    assert not verify_kinguin_secret("kinguin-s3cret", "kinguin-s3cre")
    assert not verify_kinguin_secret("kinguin-s3cret", "")

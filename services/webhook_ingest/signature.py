"""Webhook signature checks for NOWPayments IPNs and the Kinguin shared secret.

NOWPayments signs an IPN by re-serialising the parsed body in JavaScript:
``JSON.stringify(sortObject(JSON.parse(rawBody)))`` hashed with HMAC-SHA512. The
signed bytes are therefore not the bytes on the wire, and Python's ``json`` module
does not reproduce them (number formatting, key order, array handling and string
escaping all differ), so this module re-implements the JavaScript behaviour.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import math
import re
from collections.abc import Iterator
from decimal import Decimal
from typing import NoReturn

__all__ = [
    "MalformedBodyError",
    "canonical_json",
    "nowpayments_signature",
    "parse_ipn_body",
    "verify_kinguin_secret",
    "verify_nowpayments_signature",
]

# Largest canonical array index (2**32 - 2). JavaScript objects enumerate such keys
# first, in numeric order, whatever order they were inserted in.
_MAX_ARRAY_INDEX = 4_294_967_294
_MAX_ARRAY_INDEX_DIGITS = len(str(_MAX_ARRAY_INDEX))

# Assigning to "__proto__" on a plain object invokes the prototype setter instead
# of creating an own property, so sortObject silently drops this key.
_PROTO_KEY = "__proto__"

_SHORT_ESCAPES = {
    '"': '\\"',
    "\\": "\\\\",
    "\b": "\\b",
    "\f": "\\f",
    "\n": "\\n",
    "\r": "\\r",
    "\t": "\\t",
}

# A surrogate pair is well-formed UTF-16 and JSON.stringify keeps it verbatim; only
# lone surrogates are escaped, so pairs must be matched before single code units.
_NEEDS_ESCAPE = re.compile(
    r"[\ud800-\udbff][\udc00-\udfff]|[\"\\\x00-\x1f\ud800-\udfff]"
)


class MalformedBodyError(ValueError):
    """The webhook body is not a JSON object that JavaScript's JSON.parse accepts."""


def _reject_constant(name: str) -> NoReturn:
    raise MalformedBodyError(f"JSON.parse does not accept the literal {name}")


def parse_ipn_body(raw: bytes) -> dict[str, object]:
    """Parse a raw IPN body the way ``JSON.parse`` would and return the object.

    Every number becomes a float (an IEEE double, as in JavaScript); NaN and
    Infinity literals, invalid UTF-8, trailing data, absurd nesting and non-object
    top-level values raise MalformedBodyError.
    """
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise MalformedBodyError("body is not valid UTF-8") from exc
    try:
        value: object = json.loads(
            text, parse_int=float, parse_constant=_reject_constant
        )
    except MalformedBodyError:
        raise
    except RecursionError as exc:
        raise MalformedBodyError("body is nested too deeply") from exc
    except ValueError as exc:
        raise MalformedBodyError(f"body is not valid JSON: {exc}") from exc
    if not isinstance(value, dict):
        raise MalformedBodyError("top-level JSON value is not an object")
    return value


def _is_array_index(key: str) -> bool:
    if not (key.isascii() and key.isdigit()):
        return False
    if len(key) > _MAX_ARRAY_INDEX_DIGITS or (len(key) > 1 and key[0] == "0"):
        return False
    return int(key) <= _MAX_ARRAY_INDEX


def _utf16_sort_key(key: str) -> bytes:
    # Array.prototype.sort compares UTF-16 code units; big-endian UTF-16 bytes
    # order the same way, unlike Python's code-point order for astral characters.
    return key.encode("utf-16-be", "surrogatepass")


def _entries(container: dict[str, object] | list[object]) -> list[tuple[str, object]]:
    if isinstance(container, list):
        return [(str(index), item) for index, item in enumerate(container)]
    indices: list[str] = []
    names: list[str] = []
    for key in container:
        if not isinstance(key, str):
            raise TypeError(f"object keys must be str, not {type(key).__name__}")
        if _is_array_index(key):
            indices.append(key)
        elif key != _PROTO_KEY:
            names.append(key)
    indices.sort(key=int)
    if all(name.isascii() for name in names):
        names.sort()  # code-point and UTF-16 order agree on ASCII
    else:
        names.sort(key=_utf16_sort_key)
    return [(key, container[key]) for key in (*indices, *names)]


def _escape_match(match: re.Match[str]) -> str:
    text = match.group()
    if len(text) == 2:
        high, low = ord(text[0]), ord(text[1])
        return chr(0x10000 + ((high - 0xD800) << 10) + (low - 0xDC00))
    short = _SHORT_ESCAPES.get(text)
    if short is not None:
        return short
    return f"\\u{ord(text):04x}"


def _quote(text: str) -> str:
    if _NEEDS_ESCAPE.search(text) is None:
        return f'"{text}"'
    return '"' + _NEEDS_ESCAPE.sub(_escape_match, text) + '"'


def _js_number(number: float) -> str:
    """Format a double like ECMAScript Number::toString, or "null" if not finite."""
    if 1e-4 <= abs(number) < 1e16:
        # Here Python's repr and ECMAScript both print positional notation of
        # the same shortest digits; only Python's trailing ".0" differs.
        text = repr(number)
        return text[:-2] if text.endswith(".0") else text
    if not math.isfinite(number):
        return "null"
    if number == 0:
        return "0"
    sign = "-" if number < 0 else ""
    # repr() yields the shortest digits that round-trip, the same digits the
    # ECMAScript algorithm selects.
    _, digit_tuple, exponent = Decimal(repr(abs(number))).normalize().as_tuple()
    if not isinstance(exponent, int):
        raise AssertionError("finite Decimal has an integer exponent")
    digits = "".join(map(str, digit_tuple))
    k = len(digits)
    n = exponent + k
    if k <= n <= 21:
        body = digits + "0" * (n - k)
    elif 0 < n <= 21:
        body = f"{digits[:n]}.{digits[n:]}"
    elif -6 < n <= 0:
        body = "0." + "0" * -n + digits
    else:
        mantissa = digits if k == 1 else f"{digits[0]}.{digits[1:]}"
        body = f"{mantissa}e{'+' if n - 1 >= 0 else '-'}{abs(n - 1)}"
    return sign + body


def _scalar(value: object) -> str:
    if isinstance(value, str):
        return _quote(value)
    if isinstance(value, float):
        return _js_number(value)
    if value is None:
        return "null"
    if value is True:
        return "true"
    if value is False:
        return "false"
    if isinstance(value, int):
        try:
            return _js_number(float(value))
        except OverflowError:
            return "null"
    raise TypeError(f"cannot serialise {type(value).__name__} as JSON")


def canonical_json(value: object) -> str:
    """Return ``JSON.stringify(sortObject(value))`` for a value from parse_ipn_body.

    Object keys are ordered as a JavaScript object enumerates them (array-index
    keys numerically, then the rest by UTF-16 code units), arrays become objects
    keyed "0", "1", ..., and numbers and strings are printed as JSON.stringify
    prints them. The walk is iterative so deep nesting cannot overflow the stack.
    """
    parts: list[str] = []
    stack: list[Iterator[tuple[str, object]]] = []
    pending: Iterator[tuple[str, object]] = iter([("", value)])
    first_flags: list[bool] = []
    while True:
        entry = next(pending, None)
        if entry is None:
            if not stack:
                break
            parts.append("}")
            pending = stack.pop()
            first_flags.pop()
            continue
        key, item = entry
        if first_flags:
            if not first_flags[-1]:
                parts.append(",")
            first_flags[-1] = False
            parts.append(_quote(key))
            parts.append(":")
        if isinstance(item, dict | list):
            parts.append("{")
            stack.append(pending)
            pending = iter(_entries(item))
            first_flags.append(True)
        else:
            parts.append(_scalar(item))
    return "".join(parts)


def sign_canonical(secret: str, canonical: str) -> str:
    """Return the lowercase hex HMAC-SHA512 of an already canonical body."""
    return hmac.new(
        secret.encode("utf-8"), canonical.encode("utf-8"), hashlib.sha512
    ).hexdigest()


def signature_matches(secret: str, canonical: str, signature: str) -> bool:
    """Compare a header value with the canonical body's signature in constant time.

    Surrounding whitespace and hex letter case in the header are ignored.
    """
    expected = sign_canonical(secret, canonical).encode("ascii")
    given = signature.strip().lower().encode("utf-8", "surrogatepass")
    return hmac.compare_digest(expected, given)


def nowpayments_signature(secret: str, raw_body: bytes) -> str:
    """Return the lowercase hex HMAC-SHA512 NOWPayments sends in x-nowpayments-sig.

    Raises MalformedBodyError if the body is not a JSON object.
    """
    return sign_canonical(secret, canonical_json(parse_ipn_body(raw_body)))


def verify_nowpayments_signature(secret: str, raw_body: bytes, signature: str) -> bool:
    """Check an x-nowpayments-sig header value against the body in constant time.

    Raises MalformedBodyError if the body is not a JSON object.
    """
    canonical = canonical_json(parse_ipn_body(raw_body))
    return signature_matches(secret, canonical, signature)


def verify_kinguin_secret(expected: str, given: str) -> bool:
    """Compare the Kinguin webhook secret with the configured one in constant time."""
    return hmac.compare_digest(
        expected.encode("utf-8", "surrogatepass"),
        given.encode("utf-8", "surrogatepass"),
    )

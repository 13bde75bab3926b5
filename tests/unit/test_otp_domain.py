"""Login codes, their keyed hashes, their verdicts and the request window."""

from __future__ import annotations

import ipaddress
import re
import uuid
from datetime import UTC, datetime, timedelta

from services.otp.domain import (
    ADDRESS_WINDOW,
    MAX_WRONG_TRIES,
    IssuedCode,
    KeyedHasher,
    SlidingWindow,
    VerificationFailure,
    client_key,
    generate_code,
    judge_code,
    scopes_for,
)

NOW = datetime(2026, 12, 3, 10, 0, 0, tzinfo=UTC)
HASHER = KeyedHasher(b"unit-test-secret-0123456789")


def seconds(value: float) -> timedelta:
    return timedelta(seconds=value)


def issued(code: str = "042917", wrong_tries: int = 0) -> IssuedCode:
    """A code issued at NOW, as the store would read it back."""
    request_id = uuid.uuid4()
    return IssuedCode(
        request_id=request_id,
        code_hash=HASHER.code(request_id, code),
        expires_at=NOW + timedelta(minutes=5),
        wrong_tries=wrong_tries,
    )


def test_a_code_is_six_digits() -> None:
    """Every code is exactly six ASCII digits."""
    codes = {generate_code() for _ in range(500)}

    assert all(re.fullmatch(r"[0-9]{6}", code) for code in codes)
    assert len(codes) > 450


def test_a_small_draw_keeps_its_leading_zeros() -> None:
    """Seven is 000007, not 7: the code space is the whole million."""
    assert generate_code(lambda _: 7) == "000007"
    assert generate_code(lambda bound: bound - 1) == "999999"


def test_an_address_hashes_the_same_whatever_its_case_or_spaces() -> None:
    """Limits and codes follow the address, not how it was typed."""
    assert HASHER.email(" Person@Example.COM ") == HASHER.email("person@example.com")
    assert HASHER.email("person@example.com") != HASHER.email("other@example.com")


def test_the_hash_depends_on_the_secret_and_the_purpose() -> None:
    """Another secret gives another hash; an address never hashes like a client."""
    other = KeyedHasher(b"another-secret-0123456789")

    assert HASHER.email("a@example.com") != other.email("a@example.com")
    assert HASHER.email("127.0.0.1") != HASHER.client("127.0.0.1")
    assert len(HASHER.email("a@example.com")) == 32


def test_a_code_matches_only_itself_and_only_for_its_request() -> None:
    """The hash binds the code to the request that issued it."""
    request_id = uuid.uuid4()
    stored = HASHER.code(request_id, "123456")

    assert HASHER.code_matches(request_id, "123456", stored)
    assert not HASHER.code_matches(request_id, "123457", stored)
    assert not HASHER.code_matches(uuid.uuid4(), "123456", stored)


def test_the_right_code_in_time_logs_in() -> None:
    """No failure for the code that was issued, before it expires."""
    assert judge_code(issued("042917"), "042917", NOW, HASHER) is None


def test_a_wrong_code_or_no_code_at_all_is_invalid() -> None:
    """An address without a live code answers like a wrong code."""
    assert judge_code(issued("042917"), "042918", NOW, HASHER) == (
        VerificationFailure.INVALID_CODE
    )
    assert judge_code(None, "042917", NOW, HASHER) == VerificationFailure.INVALID_CODE


def test_a_code_expires_at_the_end_of_its_five_minutes() -> None:
    """A second before the end it works; from the end on it is expired."""
    code = issued("042917")

    assert judge_code(code, "042917", NOW + seconds(299), HASHER) is None
    assert judge_code(code, "042917", NOW + seconds(300), HASHER) == (
        VerificationFailure.EXPIRED
    )


def test_a_code_with_five_wrong_tries_is_dead_even_to_the_right_code() -> None:
    """Four wrong tries leave it alive; the fifth kills it, before expiry counts."""
    alive = issued("042917", wrong_tries=MAX_WRONG_TRIES - 1)
    dead = issued("042917", wrong_tries=MAX_WRONG_TRIES)

    assert judge_code(alive, "042917", NOW, HASHER) is None
    assert judge_code(dead, "042917", NOW, HASHER) == (
        VerificationFailure.TOO_MANY_ATTEMPTS
    )
    assert judge_code(dead, "042917", NOW + timedelta(hours=1), HASHER) == (
        VerificationFailure.TOO_MANY_ATTEMPTS
    )


def test_a_window_takes_requests_up_to_its_limit() -> None:
    """Three fit in a minute; the fourth waits."""
    assert ADDRESS_WINDOW.retry_after([], NOW) is None
    assert ADDRESS_WINDOW.retry_after([NOW, NOW], NOW) is None
    assert ADDRESS_WINDOW.retry_after([NOW, NOW, NOW], NOW) == 60


def test_the_wait_lasts_until_the_oldest_request_leaves_the_window() -> None:
    """Requests at 0, 20 and 40 s: at 50 s the next fits in 10 s, at 61 s in 19 s."""
    start = NOW
    recent = [start, start + seconds(20), start + seconds(40)]

    assert ADDRESS_WINDOW.retry_after(recent, start + seconds(50)) == 10
    assert ADDRESS_WINDOW.retry_after(recent, start + seconds(60)) is None
    later = [*recent[1:], start + seconds(60)]
    assert ADDRESS_WINDOW.retry_after(later, start + seconds(61)) == 19


def test_the_wait_is_rounded_up_and_never_below_a_second() -> None:
    """9.2 s is said as 10; a wait of a few microseconds still as 1."""
    recent = [NOW, NOW, NOW]

    assert ADDRESS_WINDOW.retry_after(recent, NOW + seconds(50.8)) == 10
    assert ADDRESS_WINDOW.retry_after(recent, NOW + seconds(59.99999)) == 1


def test_a_window_overfull_from_a_higher_limit_waits_for_enough_to_leave() -> None:
    """Five requests against a limit of three: the third oldest has to leave."""
    window = SlidingWindow(3, seconds(60))
    recent = [NOW + seconds(s) for s in (0, 10, 20, 30, 40)]

    assert window.retry_after(recent, NOW + seconds(45)) == 35


def test_an_ipv4_client_is_keyed_by_its_whole_address() -> None:
    """Neighbours in one IPv4 network are separate clients."""
    assert client_key("203.0.113.7") == "203.0.113.7"
    assert client_key("203.0.113.7") != client_key("203.0.113.8")


def test_every_address_of_one_ipv6_64_is_one_client() -> None:
    """Drawing another address from the same /64 buys no fresh window."""
    network = ipaddress.IPv6Network("2001:db8:1:2::/64")
    keys = {client_key(str(network[n])) for n in (0, 1, 2**32, 2**64 - 1)}

    assert keys == {"2001:db8:1:2::/64"}
    assert client_key("2001:DB8:1:2:0:0:0:9") == "2001:db8:1:2::/64"
    assert client_key("2001:db8:1:3::1") == "2001:db8:1:3::/64"
    assert client_key("fe80::1%eth0") == "fe80::/64"


def test_an_ipv4_peer_of_a_dual_stack_socket_is_keyed_as_ipv4() -> None:
    """A mapped address is its IPv4 client, not one /64 shared by all of them."""
    assert client_key("::ffff:203.0.113.7") == "203.0.113.7"
    assert client_key("::ffff:203.0.113.7") != client_key("::ffff:203.0.113.8")


def test_a_peer_that_is_not_an_ip_address_is_keyed_as_it_is() -> None:
    """The stand-in for a Unix socket's peer stays one shared client."""
    assert client_key("unknown") == "unknown"


def test_an_administrator_also_gets_the_metrics_scope() -> None:
    """Addresses in the admin list read metrics; everyone else is a user."""
    admins = frozenset({"boss@example.com"})

    assert scopes_for("Boss@Example.com", admins) == ["user", "metrics:read"]
    assert scopes_for("person@example.com", admins) == ["user"]

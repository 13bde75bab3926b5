"""Tokens verify only with the right key, issuer, audience, expiry and scope."""

from __future__ import annotations

from pathlib import Path

import pytest

from shared.auth import (
    METRICS_SCOPE,
    KeyFileError,
    TokenError,
    TokenIssuer,
    TokenVerifier,
    generate_key_pair,
    load_private_key,
    load_public_key,
)


@pytest.fixture
def keys(tmp_path: Path) -> tuple[TokenIssuer, TokenVerifier]:
    private, public = generate_key_pair(tmp_path)
    issuer = TokenIssuer(load_private_key(private), "bitloot", "bitloot")
    return issuer, TokenVerifier(load_public_key(public), "bitloot", "bitloot")


def test_a_token_with_the_scope_verifies(
    keys: tuple[TokenIssuer, TokenVerifier],
) -> None:
    """The claims come back as minted."""
    issuer, verifier = keys
    claims = verifier.verify(
        issuer.mint("sre", [METRICS_SCOPE, "x"], 60), METRICS_SCOPE
    )
    assert claims.subject == "sre"
    assert claims.scopes == {METRICS_SCOPE, "x"}


def test_a_token_without_the_scope_is_refused(
    keys: tuple[TokenIssuer, TokenVerifier],
) -> None:
    """Holding some token is not enough to read metrics."""
    issuer, verifier = keys
    with pytest.raises(TokenError, match="lacks the scope"):
        verifier.verify(issuer.mint("sre", ["orders:read"], 60), METRICS_SCOPE)


def test_an_expired_token_is_refused(keys: tuple[TokenIssuer, TokenVerifier]) -> None:
    """Expiry is enforced."""
    issuer, verifier = keys
    with pytest.raises(TokenError, match="expired"):
        verifier.verify(issuer.mint("sre", [METRICS_SCOPE], -60), METRICS_SCOPE)


def test_a_token_signed_by_another_key_is_refused(
    keys: tuple[TokenIssuer, TokenVerifier], tmp_path: Path
) -> None:
    """Only holders of our private key can mint."""
    _, verifier = keys
    other_private, _ = generate_key_pair(tmp_path / "other")
    forger = TokenIssuer(load_private_key(other_private), "bitloot", "bitloot")
    with pytest.raises(TokenError, match="not valid"):
        verifier.verify(forger.mint("sre", [METRICS_SCOPE], 60), METRICS_SCOPE)


def test_a_token_for_another_audience_is_refused(
    keys: tuple[TokenIssuer, TokenVerifier], tmp_path: Path
) -> None:
    """A token minted for another system does not open ours."""
    _, verifier = keys
    private, _ = generate_key_pair(tmp_path)
    other = TokenIssuer(load_private_key(private), "bitloot", "elsewhere")
    with pytest.raises(TokenError):
        verifier.verify(other.mint("sre", [METRICS_SCOPE], 60), METRICS_SCOPE)


def test_a_missing_key_file_says_which_file(tmp_path: Path) -> None:
    """The start-up error points at the path to fix."""
    with pytest.raises(KeyFileError, match=r"nothing\.pem"):
        load_public_key(tmp_path / "nothing.pem")


def test_the_private_key_file_is_readable_by_its_owner_only(tmp_path: Path) -> None:
    """Generated keys do not leak through file permissions."""
    private, _ = generate_key_pair(tmp_path)
    assert private.stat().st_mode & 0o777 == 0o600

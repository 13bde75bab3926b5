"""Ed25519 bearer tokens: minted with the private key, checked with the public."""

from __future__ import annotations

import time
import uuid
from dataclasses import dataclass
from pathlib import Path

import jwt
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import (
    Ed25519PrivateKey,
    Ed25519PublicKey,
)

ALGORITHM = "EdDSA"
METRICS_SCOPE = "metrics:read"


class TokenError(Exception):
    """A bearer token is missing, malformed, expired or lacks a scope."""


class KeyFileError(Exception):
    """A key file is missing or does not hold an Ed25519 key."""


@dataclass(frozen=True)
class Claims:
    subject: str
    scopes: frozenset[str]
    expires_at: int
    token_id: str


def load_private_key(path: Path) -> Ed25519PrivateKey:
    """Read an Ed25519 private key from a PEM file."""
    key = serialization.load_pem_private_key(_read_key_file(path), password=None)
    if not isinstance(key, Ed25519PrivateKey):
        message = f"{path} holds a {type(key).__name__}, not an Ed25519 private key"
        raise KeyFileError(message)
    return key


def load_public_key(path: Path) -> Ed25519PublicKey:
    """Read an Ed25519 public key from a PEM file."""
    key = serialization.load_pem_public_key(_read_key_file(path))
    if not isinstance(key, Ed25519PublicKey):
        message = f"{path} holds a {type(key).__name__}, not an Ed25519 public key"
        raise KeyFileError(message)
    return key


def _read_key_file(path: Path) -> bytes:
    try:
        return path.read_bytes()
    except OSError as error:
        message = f"cannot read key file {path}: {error.strerror}"
        raise KeyFileError(message) from None


def generate_key_pair(directory: Path) -> tuple[Path, Path]:
    """Write ``jwt-private.pem`` (mode 0600) and ``jwt-public.pem`` into a folder."""
    directory.mkdir(parents=True, exist_ok=True)
    private_key = Ed25519PrivateKey.generate()
    private_path = directory / "jwt-private.pem"
    public_path = directory / "jwt-public.pem"
    private_pem = private_key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )
    public_pem = private_key.public_key().public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    private_path.touch(mode=0o600, exist_ok=True)
    private_path.chmod(0o600)
    private_path.write_bytes(private_pem)
    public_path.write_bytes(public_pem)
    return private_path, public_path


class TokenIssuer:
    """Mints signed tokens; only holders of the private key can."""

    def __init__(self, private_key: Ed25519PrivateKey, issuer: str, audience: str):
        self._key = private_key
        self._issuer = issuer
        self._audience = audience

    def mint(self, subject: str, scopes: list[str], ttl_seconds: int) -> str:
        now = int(time.time())
        claims = {
            "iss": self._issuer,
            "aud": self._audience,
            "sub": subject,
            "iat": now,
            "exp": now + ttl_seconds,
            "jti": str(uuid.uuid4()),
            "scope": " ".join(scopes),
        }
        return jwt.encode(claims, self._key, algorithm=ALGORITHM)


class TokenVerifier:
    """Checks signature, issuer, audience, expiry and scope of bearer tokens."""

    def __init__(self, public_key: Ed25519PublicKey, issuer: str, audience: str):
        self._key = public_key
        self._issuer = issuer
        self._audience = audience

    def verify(self, token: str, required_scope: str) -> Claims:
        try:
            claims = jwt.decode(
                token,
                self._key,
                algorithms=[ALGORITHM],
                issuer=self._issuer,
                audience=self._audience,
                options={"require": ["exp", "iat", "iss", "aud", "sub", "jti"]},
            )
        except jwt.ExpiredSignatureError:
            raise TokenError("the token has expired") from None
        except jwt.InvalidTokenError as error:
            raise TokenError(f"the token is not valid: {error}") from None

        scopes = frozenset(str(claims.get("scope", "")).split())
        if required_scope not in scopes:
            raise TokenError(f"the token lacks the scope {required_scope!r}")
        return Claims(
            subject=str(claims["sub"]),
            scopes=scopes,
            expires_at=int(claims["exp"]),
            token_id=str(claims["jti"]),
        )

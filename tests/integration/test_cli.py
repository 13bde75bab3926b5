"""The bitloot command line, run as an operator runs it."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

from shared.auth import METRICS_SCOPE, TokenVerifier, load_public_key


def bitloot(*args: str, **env: str) -> subprocess.CompletedProcess[str]:
    clean = {k: v for k, v in os.environ.items() if not k.startswith("BITLOOT_")}
    return subprocess.run(
        [sys.executable, "-m", "shared.cli", *args],
        env={**clean, **env},
        capture_output=True,
        text=True,
        timeout=60,
    )


def test_token_prints_only_a_token_that_the_services_accept(key_dir: Path) -> None:
    """Its stdout can go straight into a header or a file."""
    result = bitloot(
        "token",
        "--scope",
        METRICS_SCOPE,
        BITLOOT_JWT_PRIVATE_KEY_FILE=str(key_dir / "jwt-private.pem"),
    )

    assert result.returncode == 0, result.stderr
    token = result.stdout.strip()
    assert result.stdout == token + "\n"
    verifier = TokenVerifier(
        load_public_key(key_dir / "jwt-public.pem"), "bitloot", "bitloot"
    )
    assert METRICS_SCOPE in verifier.verify(token, METRICS_SCOPE).scopes


def test_token_without_a_key_says_which_variable_to_set(tmp_path: Path) -> None:
    """No traceback, a sentence and a non-zero exit."""
    result = subprocess.run(
        [sys.executable, "-m", "shared.cli", "token", "--scope", METRICS_SCOPE],
        env={k: v for k, v in os.environ.items() if not k.startswith("BITLOOT_")},
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=60,
    )

    assert result.returncode == 2
    assert "BITLOOT_JWT_PRIVATE_KEY_FILE" in result.stderr
    assert result.stdout == ""


def test_migrate_applies_once_then_reports_up_to_date(database_url: str) -> None:
    """A second run changes nothing."""
    first = bitloot("migrate", BITLOOT_DATABASE_URL=database_url)
    second = bitloot("migrate", "webhook-ingest", BITLOOT_DATABASE_URL=database_url)

    assert first.returncode == 0, first.stderr
    assert "applied shared/0001_outbox.sql" in first.stderr
    assert "service/0001_deliveries.sql" in first.stderr
    assert second.returncode == 0
    assert "webhook-ingest: up to date" in second.stderr


def test_a_bad_setting_stops_the_command_naming_the_variable() -> None:
    """The operator sees which variable to fix."""
    result = bitloot("migrate", BITLOOT_DB_POOL_MAX="lots")

    assert result.returncode == 2
    assert "BITLOOT_DB_POOL_MAX" in result.stderr
    assert "Traceback" not in result.stderr


def test_migrate_refuses_an_unknown_service() -> None:
    """A typo is not silently ignored."""
    result = bitloot("migrate", "web-ingest")

    assert result.returncode == 2
    assert "no service web-ingest" in result.stderr

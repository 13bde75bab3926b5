"""Settings come from BITLOOT_* variables; bad ones stop start-up by name."""

from __future__ import annotations

import os
import re
from pathlib import Path

import pytest

from services.email.settings import EmailSettings
from services.otp.settings import OtpSettings
from services.payment.settings import PaymentSettings
from services.payment.simulator import SimulateSettings
from services.webhook_ingest.settings import WebhookIngestSettings
from shared.settings import ENV_PREFIX, SettingsError, load_settings
from shared.smoke import SmokeSettings

ROOT = Path(__file__).resolve().parents[2]


def test_a_bad_port_names_the_variable_and_the_value(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The operator sees which variable to fix and what it held."""
    monkeypatch.setenv("BITLOOT_HTTP_PORT", "eighty")

    with pytest.raises(SettingsError) as caught:
        load_settings(WebhookIngestSettings)

    assert "BITLOOT_HTTP_PORT" in str(caught.value)
    assert "'eighty'" in str(caught.value)


def test_a_bad_secret_setting_is_named_without_echoing_its_value(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A credential never reaches the terminal or the logs, even when wrong."""
    monkeypatch.setenv("BITLOOT_DATABASE_URL", "postgresql://u:hunter2@db/x")
    monkeypatch.setenv("BITLOOT_DB_POOL_MIN", "0")

    with pytest.raises(SettingsError) as caught:
        load_settings(WebhookIngestSettings, database_url=["not", "a", "string"])

    assert "BITLOOT_DATABASE_URL" in str(caught.value)
    assert "BITLOOT_DB_POOL_MIN" in str(caught.value)
    assert "hunter2" not in str(caught.value)
    assert "'string'" not in str(caught.value)


def test_the_defaults_work_on_one_machine(monkeypatch: pytest.MonkeyPatch) -> None:
    """With nothing set, webhook-ingest listens on 4004 against localhost."""
    for name in list(os.environ):
        if name.startswith(ENV_PREFIX):
            monkeypatch.delenv(name)

    settings = load_settings(WebhookIngestSettings)

    assert settings.http_port == 4004
    assert settings.database_url.endswith("127.0.0.1:5432/bitloot")
    assert settings.nowpayments_ipn_secret is None


def test_env_example_documents_every_setting() -> None:
    """Each field of each service's and command's settings appears in .env.example."""
    documented = set(
        re.findall(r"^(BITLOOT_[A-Z0-9_]+)=", (ROOT / ".env.example").read_text(), re.M)
    )
    expected = {
        f"{ENV_PREFIX}{name.upper()}"
        for settings in (
            WebhookIngestSettings,
            PaymentSettings,
            SimulateSettings,
            SmokeSettings,
            EmailSettings,
            OtpSettings,
        )
        for name in settings.model_fields
    }
    assert expected <= documented, sorted(expected - documented)


def test_resend_without_a_key_stops_the_email_service_with_a_clear_message() -> None:
    """BITLOOT_EMAIL_PROVIDER=resend needs BITLOOT_RESEND_API_KEY."""
    with pytest.raises(SettingsError, match="BITLOOT_RESEND_API_KEY must be set"):
        load_settings(EmailSettings, email_provider="resend")


def test_a_lease_shorter_than_the_provider_timeout_is_refused() -> None:
    """A slow send must never look abandoned to another instance."""
    with pytest.raises(SettingsError, match="BITLOOT_EMAIL_LEASE_SECONDS"):
        load_settings(EmailSettings, email_lease_seconds=5, smtp_timeout_seconds=10)


def test_a_lease_that_cuts_sends_before_the_provider_timeout_is_refused() -> None:
    """A send may use 75% of the lease, which must outlast the provider's timeout."""
    with pytest.raises(SettingsError, match="BITLOOT_EMAIL_LEASE_SECONDS must be more"):
        load_settings(EmailSettings, email_lease_seconds=12, smtp_timeout_seconds=10)

    settings = load_settings(
        EmailSettings, email_lease_seconds=14, smtp_timeout_seconds=10
    )
    assert settings.email_lease_seconds == 14


@pytest.mark.parametrize(
    "sender",
    [
        "BitLoot",
        "no-reply@",
        "BitLoot no-reply@bitloot.example",
        "BitLoot <no-reply@bitloot.example",
        "BitLoot <no-reply@bitloot.example> and more",
        "orders@bitloot.example, support@bitloot.example",
        "BitLoot <no-reply@localhost>",
    ],
)
def test_a_from_that_is_not_one_address_stops_the_email_service(sender: str) -> None:
    """Every email would be refused, so a bad From is refused at start, by name."""
    with pytest.raises(SettingsError) as caught:
        load_settings(EmailSettings, email_from=sender)

    assert "BITLOOT_EMAIL_FROM" in str(caught.value)
    assert repr(sender) in str(caught.value)


@pytest.mark.parametrize(
    "sender",
    [
        "BitLoot <no-reply@bitloot.example>",
        "no-reply@bitloot.example",
        '"BitLoot, Inc." <orders@bitloot.example>',
    ],
)
def test_a_from_with_or_without_a_display_name_is_accepted(sender: str) -> None:
    """An address alone, or a name and the address in angle brackets."""
    assert load_settings(EmailSettings, email_from=sender).email_from == sender


def test_the_default_from_is_a_valid_address(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """With nothing set, the email service starts."""
    monkeypatch.delenv("BITLOOT_EMAIL_FROM", raising=False)

    assert "@" in load_settings(EmailSettings).email_from


OTP_SIGNING = {
    "otp_hash_secret": "unit-test-secret-0123456789",
    "jwt_private_key_file": Path("jwt-private.pem"),
}


def test_the_otp_service_will_not_start_without_its_hash_secret() -> None:
    """No secret, or a short one, stops start-up naming the variable, not the value."""
    missing = {**OTP_SIGNING, "otp_hash_secret": None}
    short = {**OTP_SIGNING, "otp_hash_secret": "hunter2"}

    for values in (missing, short):
        with pytest.raises(SettingsError) as caught:
            load_settings(OtpSettings, **values)
        assert "BITLOOT_OTP_HASH_SECRET must be set" in str(caught.value)
        assert "hunter2" not in str(caught.value)


def test_the_otp_service_will_not_start_without_a_signing_key() -> None:
    """It mints the login tokens, so it needs the private key."""
    with pytest.raises(SettingsError, match="BITLOOT_JWT_PRIVATE_KEY_FILE"):
        load_settings(OtpSettings, **{**OTP_SIGNING, "jwt_private_key_file": None})


def test_admin_emails_are_a_comma_separated_list_in_any_case(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """BITLOOT_ADMIN_EMAILS is typed by people: commas, spaces, capitals."""
    monkeypatch.setenv("BITLOOT_ADMIN_EMAILS", " Boss@Example.com, ops@example.com ,")

    settings = load_settings(OtpSettings, **OTP_SIGNING)

    assert settings.admin_emails == {"boss@example.com", "ops@example.com"}
    assert settings.http_port == 4001


def test_an_admin_entry_that_is_not_an_address_is_refused_by_name() -> None:
    """A typo in the admin list stops start-up instead of locking the admin out."""
    with pytest.raises(SettingsError, match="BITLOOT_ADMIN_EMAILS"):
        load_settings(OtpSettings, **OTP_SIGNING, admin_emails="boss.example.com")


def test_an_empty_variable_means_unset(monkeypatch: pytest.MonkeyPatch) -> None:
    """``BITLOOT_SMTP_USERNAME=`` copied from .env.example logs in as nobody."""
    monkeypatch.setenv("BITLOOT_SMTP_USERNAME", "")
    monkeypatch.setenv("BITLOOT_SMTP_PASSWORD", "")
    monkeypatch.setenv("BITLOOT_HTTP_PORT", "")

    settings = load_settings(EmailSettings)

    assert settings.smtp_username is None
    assert settings.smtp_password is None
    assert settings.http_port == 4002

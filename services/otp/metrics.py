"""The otp service's own metrics, every label series present from start-up."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter

from services.otp.domain import VerificationFailure

ISSUE = "issue"
ROLES = ("user", "admin")


class OtpMetrics:
    def __init__(self, registry: CollectorRegistry) -> None:
        self.rate_limit_exceeded = Counter(
            "bitloot_otp_rate_limit_exceeded",
            "Requests refused with 429 because an address or a client asked too often.",
            ["operation"],
            registry=registry,
        )
        self.verification_failed = Counter(
            "bitloot_otp_verification_failed",
            "Codes refused at verify, by reason.",
            ["reason"],
            registry=registry,
        )
        self.codes_issued = Counter(
            "bitloot_otp_codes_issued",
            "Codes issued and handed to the email service.",
            registry=registry,
        )
        self.logins = Counter(
            "bitloot_otp_logins",
            "Codes exchanged for a token, by whether the address is an admin's.",
            ["role"],
            registry=registry,
        )
        self.rate_limit_exceeded.labels(operation=ISSUE)
        for reason in VerificationFailure:
            self.verification_failed.labels(reason=reason.value)
        for role in ROLES:
            self.logins.labels(role=role)

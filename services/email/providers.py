"""Where emails are sent: the provider interface shared by SMTP and Resend."""

from __future__ import annotations

from typing import Protocol

from services.email.domain import OutgoingEmail

SMTP = "smtp"
RESEND = "resend"


class EmailProvider(Protocol):
    """Sends one email, or raises ``SendError`` saying why it did not."""

    name: str
    # Whether the provider itself drops a second send with the same
    # idempotency key; only then may an interrupted send be tried again.
    deduplicates: bool

    async def send(self, email: OutgoingEmail) -> str:
        """Send the email; the provider's id for it (its Message-ID for SMTP)."""
        ...

    async def close(self) -> None: ...

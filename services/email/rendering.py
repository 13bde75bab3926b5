"""Emails from templates: a subject, a text part and an HTML part per type."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import jinja2

from services.email.domain import EmailType

TEMPLATES = Path(__file__).parent / "templates"
SUBJECTS: dict[EmailType, str] = {
    EmailType.OTP: "Your BitLoot login code",
    EmailType.WELCOME: "Welcome to BitLoot",
    EmailType.PAYMENT_CREATED: "How to pay for your BitLoot order",
    EmailType.PAYMENT_COMPLETED: "Payment received for your BitLoot order",
    EmailType.UNDERPAID: "Your BitLoot payment is incomplete",
}

# HTML is escaped, so an address or a name can never inject markup; a value a
# template names but the data lacks is an error, never an empty gap in an email.
_ENVIRONMENT = jinja2.Environment(
    loader=jinja2.FileSystemLoader(TEMPLATES),
    autoescape=jinja2.select_autoescape(enabled_extensions=("html",)),
    undefined=jinja2.StrictUndefined,
    keep_trailing_newline=True,
)


@dataclass(frozen=True)
class RenderedEmail:
    subject: str
    text: str
    html: str


class TemplateDataError(ValueError):
    """The data lacks a value the type's templates need."""


def render(email_type: EmailType, data: dict[str, Any]) -> RenderedEmail:
    """The subject, text and HTML of one email of a type."""
    subject = SUBJECTS[email_type]
    try:
        text = _ENVIRONMENT.get_template(f"{email_type.value}.txt").render(data)
        html = _ENVIRONMENT.get_template(f"{email_type.value}.html").render(
            {**data, "subject": subject}
        )
    except jinja2.UndefinedError as error:
        raise TemplateDataError(f"{email_type.value}: {error.message}") from None
    return RenderedEmail(subject, text, html)

"""Masking the recipient's address in failure details, however it is quoted."""

from __future__ import annotations

import pytest

from services.email.domain import mask_recipient


@pytest.mark.parametrize(
    "quoted",
    [
        "shopper@example.com",
        "SHOPPER@EXAMPLE.COM",
        "<Shopper@Example.com>",
        "Shopper Name <shopper@example.com>",
        "shopper name <SHOPPER@example.com>",
    ],
)
def test_every_form_of_the_address_in_any_case_becomes_one_mask(quoted: str) -> None:
    """As given, bare or in angle brackets, in any case: one ``<recipient>``."""
    detail = mask_recipient(
        f"550 {quoted}: no such user", "Shopper Name <shopper@example.com>"
    )

    assert detail == "550 <recipient>: no such user"


def test_text_without_the_address_is_left_alone() -> None:
    """Other addresses and words stay as the server wrote them."""
    text = "550 5.7.1 relaying for other@example.com denied"

    assert mask_recipient(text, "shopper@example.com") == text

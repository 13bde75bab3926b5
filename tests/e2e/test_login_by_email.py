"""Logging in: otp → email → SMTP → the person types the code → a token."""

from __future__ import annotations

import re

import aiohttp

from tests.conftest import StartEmail, StartOtp
from tests.support.emails import sent, text_of
from tests.support.metrics import scrape_until
from tests.support.otp import request_code, verify_code
from tests.support.smtp_server import SmtpServer

ADMIN = "boss@example.com"


async def test_an_admin_logs_in_with_the_emailed_code_and_reads_the_metrics(
    start_email: StartEmail, start_otp: StartOtp
) -> None:
    """The code from the email buys a token that both services' /metrics take."""
    async with SmtpServer() as smtp:
        email = await start_email(smtp_port=smtp.port)
        otp = await start_otp(admin_emails=ADMIN)

        status, _, _ = await request_code(otp.url, ADMIN)
        assert status == 202
        (mail,) = await smtp.wait_for(1, timeout=10)
        found = re.search(r"\b([0-9]{6})\b", text_of(mail))
        assert found is not None, text_of(mail)
        status, answer = await verify_code(otp.url, ADMIN, found.group(1))
        assert status == 200, answer
        token = answer["access_token"]
        mails = await smtp.wait_for(2, timeout=10)

        statuses = []
        async with aiohttp.ClientSession() as session:
            for service in (otp, email):
                async with session.get(
                    f"{service.url}/metrics",
                    headers={"Authorization": f"Bearer {token}"},
                ) as response:
                    statuses.append(response.status)
        await scrape_until(
            email.url, token, lambda s: sent(s, "otp") == 1 and sent(s, "welcome") == 1
        )

    assert mail.rcpt_tos == (ADMIN,)
    assert mail.message["Subject"] == "Your BitLoot login code"
    assert mails[1].message["Subject"] == "Welcome to BitLoot"
    assert statuses == [200, 200]

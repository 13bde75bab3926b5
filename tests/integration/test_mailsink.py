"""The developer's mail sink: every message sent to it becomes one .eml file."""

from __future__ import annotations

import asyncio
import re
import signal
import socket
import sys
from collections.abc import AsyncIterator
from email.message import EmailMessage
from email.parser import BytesParser
from email.policy import default
from pathlib import Path

import pytest

from infra.mailsink import MailSink, serve_mail
from services.email.domain import EmailType, OutgoingEmail, idempotency_key
from services.email.smtp import SmtpProvider

ROOT = Path(__file__).resolve().parents[2]
SHOPPER = "shopper@example.com"
NAME = re.compile(r"^\d{8}T\d{6}Z-[0-9a-f]{8}-[a-z0-9-]+\.eml$")


@pytest.fixture
async def sink(tmp_path: Path) -> AsyncIterator[MailSink]:
    async with await serve_mail("127.0.0.1", 0, tmp_path / "mail") as running:
        yield running


def outgoing(subject: str, text: str, business_key: str) -> OutgoingEmail:
    return OutgoingEmail(
        idempotency_key=idempotency_key(EmailType.OTP, business_key),
        email_type=EmailType.OTP,
        sender="BitLoot <no-reply@bitloot.example>",
        recipient=SHOPPER,
        subject=subject,
        text=text,
        html=f"<p>{text}</p>",
    )


def parsed(path: Path) -> EmailMessage:
    raw = path.read_bytes().replace(b"\r\n", b"\n")
    return BytesParser(policy=default).parsebytes(raw)


def body_text(message: EmailMessage) -> str:
    part = message.get_body(preferencelist=("plain",))
    assert part is not None
    return str(part.get_content()).strip()


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


async def test_each_message_lands_in_its_own_eml_file(
    sink: MailSink, capsys: pytest.CaptureFixture[str]
) -> None:
    """Two sends, two named .eml files that parse back to what was sent."""
    provider = SmtpProvider("127.0.0.1", sink.port, timeout=2, local_hostname="test")
    first = outgoing("Your login code", "Your code is 123456.", "login-1")
    second = outgoing("Ваш заказ оплачен!", "Your order is paid.", "order-1")

    await provider.send(first)
    await provider.send(second)

    files = sorted(sink.folder.glob("*.eml"))
    assert len(files) == 2
    assert all(NAME.match(path.name) for path in files), files
    assert sorted(sink.folder.iterdir()) == files, "a temporary file was left"
    by_subject = {parsed(path)["Subject"]: parsed(path) for path in files}
    assert set(by_subject) == {first.subject, second.subject}
    assert body_text(by_subject[first.subject]) == first.text
    assert body_text(by_subject[second.subject]) == second.text
    assert by_subject[first.subject]["Delivered-To"] == SHOPPER
    assert any(path.name.endswith("-your-login-code.eml") for path in files)
    logged = capsys.readouterr().err
    assert all(path.name in logged for path in files)
    assert SHOPPER not in logged


async def test_the_sink_runs_until_sigterm(tmp_path: Path) -> None:
    """As a program it says where mail lands, saves mail, and stops on SIGTERM."""
    folder = tmp_path / "mail"
    port = free_port()
    process = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "infra.mailsink",
        "--port",
        str(port),
        "--dir",
        str(folder),
        cwd=ROOT,
        stderr=asyncio.subprocess.PIPE,
    )
    try:
        assert process.stderr is not None
        banner = await asyncio.wait_for(process.stderr.readline(), 10)
        assert f"127.0.0.1:{port}" in banner.decode()
        assert str(folder) in banner.decode()
        provider = SmtpProvider("127.0.0.1", port, timeout=2, local_hostname="test")
        await provider.send(outgoing("Welcome", "Welcome aboard.", "welcome-1"))
        process.send_signal(signal.SIGTERM)
        assert await asyncio.wait_for(process.wait(), 10) == 0
    finally:
        if process.returncode is None:
            process.kill()
            await process.wait()
    [saved] = folder.glob("*.eml")
    assert parsed(saved)["Subject"] == "Welcome"

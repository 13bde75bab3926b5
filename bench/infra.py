"""The bench's own PostgreSQL database, RabbitMQ vhost and server processes.

Databases and vhosts are made the way the tests make theirs (tests.support).

Everything is created under a random name and removed again by the caller's
cleanup stack, whether the run succeeds, fails or is interrupted.
"""

from __future__ import annotations

import asyncio
import os
import platform
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

import aio_pika
import asyncpg

from contracts.envelope import EXCHANGE
from tests.support import infra as test_infra

REPO = Path(__file__).resolve().parent.parent


class BenchError(Exception):
    """The bench cannot go on; the message says why."""


def create_database(name: str) -> str:
    return asyncio.run(test_infra.create_database(name))


def drop_database(name: str) -> None:
    asyncio.run(test_infra.drop_database(name))


async def fetch_value(dsn: str, query: str) -> object:
    connection = await asyncpg.connect(dsn)
    try:
        return await connection.fetchval(query)
    finally:
        await connection.close()


def _rabbitmqctl(*args: str) -> str:
    try:
        done = subprocess.run(
            ["rabbitmqctl", "-q", *args],
            check=True,
            capture_output=True,
            text=True,
            timeout=60,
        )
    except FileNotFoundError:
        raise BenchError("rabbitmqctl is not on PATH; it creates the vhost") from None
    except subprocess.CalledProcessError as error:
        raise BenchError(f"rabbitmqctl {args[0]} failed: {error.stderr}") from None
    return done.stdout.strip()


def create_vhost(name: str) -> str:
    try:
        return test_infra.create_vhost(name)
    except FileNotFoundError:
        raise BenchError("rabbitmqctl is not on PATH; it creates the vhost") from None
    except subprocess.CalledProcessError as error:
        raise BenchError(f"rabbitmqctl failed: {error.stderr}") from None


def delete_vhost(name: str) -> None:
    test_infra.delete_vhost(name)


async def bind_queue(amqp_url: str, queue: str, routing_key: str) -> None:
    """A durable queue on ``bitloot.events``, so publishes there are routable."""
    connection = await aio_pika.connect(amqp_url)
    async with connection:
        channel = await connection.channel()
        exchange = await channel.declare_exchange(
            EXCHANGE, aio_pika.ExchangeType.TOPIC, durable=True
        )
        declared = await channel.declare_queue(queue, durable=True)
        await declared.bind(exchange, routing_key)


async def queue_depth(amqp_url: str, queue: str, purge: bool = False) -> int:
    """Messages ready in a queue (passive declare); optionally empty it after."""
    connection = await aio_pika.connect(amqp_url)
    async with connection:
        channel = await connection.channel()
        declared = await channel.declare_queue(queue, passive=True)
        count = declared.declaration_result.message_count or 0
        if purge:
            await declared.purge()
        return count


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


@dataclass
class Server:
    """A server subprocess, its output going to a log file."""

    name: str
    process: subprocess.Popen[bytes]
    port: int
    log: Path

    def log_tail(self, lines: int = 20) -> str:
        try:
            text = self.log.read_text(errors="replace")
        except OSError:
            return ""
        return "\n".join(text.splitlines()[-lines:])

    def cpu_seconds(self) -> float:
        """User plus system CPU time the server process has used so far."""
        return process_cpu_seconds(self.process.pid)

    def stop(self, timeout: float = 20.0) -> None:
        """SIGTERM, so it drains and closes cleanly; SIGKILL if it hangs."""
        if self.process.poll() is not None:
            return
        self.process.send_signal(signal.SIGTERM)
        try:
            self.process.wait(timeout)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()


def process_cpu_seconds(pid: int) -> float:
    """utime + stime of a process, from /proc (0.0 where there is no /proc)."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return 0.0
    fields = stat[stat.rindex(")") + 2 :].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def load_average() -> str:
    try:
        return " ".join(Path("/proc/loadavg").read_text().split()[:3])
    except OSError:
        return "unknown"


def start_server(
    name: str,
    args: list[str],
    port: int,
    log: Path,
    env: Mapping[str, str] | None = None,
) -> Server:
    with log.open("wb") as out:
        process = subprocess.Popen(
            [sys.executable, *args],
            cwd=REPO,
            env={**os.environ, **(env or {})},
            stdin=subprocess.DEVNULL,
            stdout=out,
            stderr=subprocess.STDOUT,
            # Its own process group: Ctrl-C reaches the bench, which stops it.
            start_new_session=True,
        )
    return Server(name, process, port, log)


def wait_healthy(server: Server, timeout: float = 30.0) -> None:
    url = f"http://127.0.0.1:{server.port}/healthz"
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if server.process.poll() is not None:
            raise BenchError(
                f"{server.name} exited with {server.process.returncode}:\n"
                + server.log_tail()
            )
        try:
            with urllib.request.urlopen(url, timeout=1) as response:
                if response.status == 200:
                    return
        except (urllib.error.URLError, OSError):
            pass
        time.sleep(0.1)
    raise BenchError(f"{server.name} did not answer {url} within {timeout:.0f}s")


@dataclass(frozen=True)
class Machine:
    cpu: str
    cores: int
    python: str
    postgres: str
    rabbitmq: str

    def describe(self) -> str:
        return (
            f"CPU {self.cpu}, {self.cores} cores; Python {self.python}; "
            f"PostgreSQL {self.postgres}; RabbitMQ {self.rabbitmq}"
        )


def _cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            key, _, value = line.partition(":")
            if key.strip() == "model name":
                return value.strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def machine(dsn: str) -> Machine:
    postgres = asyncio.run(fetch_value(dsn, "SHOW server_version"))
    return Machine(
        cpu=_cpu_model(),
        cores=os.cpu_count() or 0,
        python=platform.python_version(),
        postgres=str(postgres),
        rabbitmq=_rabbitmqctl("version"),
    )


def require_wrk() -> str:
    path = shutil.which("wrk")
    if path is None:
        raise BenchError(
            "wrk, the load generator, is not installed: "
            "run `apt-get install wrk` (Debian/Ubuntu) and try again"
        )
    return path

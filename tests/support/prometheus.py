"""A real Prometheus, run from the repository's config in a folder of its own."""

from __future__ import annotations

import asyncio
import os
import re
import shutil
import socket
import subprocess
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import aiohttp
import pytest

REPOSITORY_CONFIG_DIR = Path(__file__).resolve().parents[2] / "prometheus"
# Scrapes and rule evaluations every second instead of every 15.
SHORTENED = {
    "scrape_interval: 15s": "scrape_interval: 1s",
    "evaluation_interval: 15s": "evaluation_interval: 1s",
}


def find_tool(name: str) -> str:
    """The path of ``prometheus`` or ``promtool``: skip without it, fail in CI."""
    path = shutil.which(name)
    if path is not None:
        return path
    if os.environ.get("CI"):
        pytest.fail(f"{name} is not on PATH; .ci/run must install it")
    pytest.skip(f"{name} is not installed")


def lay_out(directory: Path, token: str) -> Path:
    """Copy the config with targets/, secrets/ and rules/ beside it, as deployed.

    Scrapes and rule evaluations (a group's own interval too) happen every
    second so tests wait briefly; everything else is the repository's file unchanged.
    """
    text = (REPOSITORY_CONFIG_DIR / "prometheus.yml").read_text()
    for production, shortened in SHORTENED.items():
        if text.count(production) != 1:
            message = f"expected one {production!r} in prometheus.yml to shorten"
            raise AssertionError(message)
        text = text.replace(production, shortened)

    directory.mkdir(parents=True, exist_ok=True)
    config = directory / "prometheus.yml"
    config.write_text(text)
    (directory / "targets").mkdir(exist_ok=True)
    (directory / "secrets").mkdir(exist_ok=True)
    write_token(directory, token)
    rules = REPOSITORY_CONFIG_DIR / "rules"
    if rules.is_dir():
        # A rule group's own interval is shortened like the global one.
        (directory / "rules").mkdir(exist_ok=True)
        for path in rules.glob("*.yml"):
            text = re.sub(r"(?m)^(\s+interval:) \d+[smh]$", r"\1 1s", path.read_text())
            (directory / "rules" / path.name).write_text(text)
    return config


def write_token(directory: Path, token: str) -> None:
    """Replace the scrape token; Prometheus reads the file again at each scrape."""
    (directory / "secrets" / "prometheus.token").write_text(token + "\n")


def check_config(config: Path) -> subprocess.CompletedProcess[str]:
    """Run ``promtool check config``; the caller reads its code and output."""
    promtool = find_tool("promtool")
    return subprocess.run(
        [promtool, "check", "config", str(config)],
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
    )


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


class PrometheusError(Exception):
    """Prometheus did not start or its API answered with an error."""


class Prometheus:
    """One Prometheus process and the parts of its HTTP API the tests read."""

    def __init__(self, directory: Path, process: asyncio.subprocess.Process, url: str):
        self.directory = directory
        self.targets_dir = directory / "targets"
        self.process = process
        self.url = url
        self._session = aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=5))

    @property
    def log(self) -> str:
        return (self.directory / "prometheus.log").read_text(errors="replace")

    async def query(self, promql: str) -> list[dict[str, Any]]:
        """The instant vector ``promql`` evaluates to now."""
        data = await self._get("/api/v1/query", {"query": promql})
        if data["resultType"] != "vector":
            raise PrometheusError(f"{promql!r} gave a {data['resultType']}")
        result: list[dict[str, Any]] = data["result"]
        return result

    async def targets(self) -> list[dict[str, Any]]:
        """The active targets: labels, health and last error of each."""
        data = await self._get("/api/v1/targets", {"state": "active"})
        active: list[dict[str, Any]] = data["activeTargets"]
        return active

    async def wait_for(
        self,
        read: Callable[[], Any],
        condition: Callable[[Any], bool],
        timeout: float = 30.0,
    ) -> Any:
        """Read until ``condition`` holds; on timeout, say what was last seen."""
        seen: Any = None
        try:
            async with asyncio.timeout(timeout):
                while True:
                    seen = await read()
                    if condition(seen):
                        return seen
                    await asyncio.sleep(0.2)
        except TimeoutError:
            message = f"still not there after {timeout} s; last seen: {seen!r}"
            raise AssertionError(message) from None

    async def _get(self, path: str, params: dict[str, str]) -> Any:
        async with self._session.get(f"{self.url}{path}", params=params) as response:
            body = await response.json()
        if body.get("status") != "success":
            raise PrometheusError(f"{path} {params}: {body}")
        return body["data"]

    async def wait_ready(self, timeout: float) -> None:
        """Poll /-/ready; a process that exits or stays unready fails with its log."""
        try:
            async with asyncio.timeout(timeout):
                while self.process.returncode is None:
                    try:
                        async with self._session.get(f"{self.url}/-/ready") as reply:
                            if reply.status == 200:
                                return
                    except aiohttp.ClientError:
                        pass
                    await asyncio.sleep(0.1)
        except TimeoutError:
            pass
        message = f"Prometheus at {self.url} is not ready; its log:\n{self.log}"
        raise PrometheusError(message)

    async def stop(self) -> None:
        """Terminate, give it time to close its database, then kill."""
        await self._session.close()
        if self.process.returncode is None:
            self.process.terminate()
            try:
                await asyncio.wait_for(self.process.wait(), timeout=10)
            except TimeoutError:
                self.process.kill()
                await self.process.wait()


@asynccontextmanager
async def run_prometheus(directory: Path, token: str) -> AsyncIterator[Prometheus]:
    """Lay out ``directory``, start Prometheus there, stop it on leaving."""
    binary = find_tool("prometheus")
    config = lay_out(directory, token)
    port = _free_port()
    url = f"http://127.0.0.1:{port}"

    with (directory / "prometheus.log").open("wb") as log:
        process = await asyncio.create_subprocess_exec(
            binary,
            f"--config.file={config}",
            f"--storage.tsdb.path={directory / 'data'}",
            f"--web.listen-address=127.0.0.1:{port}",
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=subprocess.STDOUT,
        )
    prometheus = Prometheus(directory, process, url)
    try:
        await prometheus.wait_ready(timeout=15)
        yield prometheus
    finally:
        await prometheus.stop()

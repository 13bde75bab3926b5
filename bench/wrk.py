"""Running wrk with bench/ipn.lua and reading the figures it prints."""

from __future__ import annotations

import json
import subprocess
from dataclasses import dataclass
from pathlib import Path

SCRIPT = Path(__file__).with_name("ipn.lua")
RESULT_PREFIX = "BENCH_RESULT "
EXHAUSTED_PREFIX = "BENCH_EXHAUSTED"


@dataclass(frozen=True)
class Load:
    """wrk's knobs, the same for every server measured."""

    threads: int
    connections: int
    duration_s: int
    warmup_s: int


@dataclass(frozen=True)
class WrkResult:
    requests: int
    duration_s: float
    non_2xx: int
    socket_errors: int
    p50_ms: float
    p90_ms: float
    p99_ms: float
    max_ms: float
    repeated: bool

    @property
    def rps(self) -> float:
        return self.requests / self.duration_s if self.duration_s else 0.0

    @property
    def ok(self) -> int:
        """Responses with a 2xx status (wrk counts status >= 400 as errors)."""
        return self.requests - self.non_2xx


def parse(stdout: str, stderr: str) -> WrkResult:
    lines = [line for line in stdout.splitlines() if line.startswith(RESULT_PREFIX)]
    if not lines:
        raise ValueError(f"wrk printed no result line:\n{stdout}\n{stderr}")
    data = json.loads(lines[-1][len(RESULT_PREFIX) :])
    return WrkResult(
        requests=int(data["requests"]),
        duration_s=data["duration_us"] / 1e6,
        non_2xx=int(data["non_2xx_3xx"]),
        socket_errors=sum(
            int(data[key])
            for key in ("connect_errors", "read_errors", "write_errors", "timeouts")
        ),
        p50_ms=data["p50_us"] / 1000,
        p90_ms=data["p90_us"] / 1000,
        p99_ms=data["p99_us"] / 1000,
        max_ms=data["max_us"] / 1000,
        repeated=EXHAUSTED_PREFIX in stderr,
    )


def run_wrk(
    wrk: str,
    url: str,
    bodies: Path,
    lines: tuple[int, int],
    threads: int,
    connections: int,
    duration_s: int,
    distinct: bool,
) -> WrkResult:
    """POST the bodies in ``lines`` (first, one past last) for ``duration_s``."""
    command = [
        wrk,
        f"-t{threads}",
        f"-c{connections}",
        f"-d{duration_s}s",
        "--timeout",
        "10s",
        "--latency",
        "-s",
        str(SCRIPT),
        url,
        "--",
        str(bodies),
        str(lines[0]),
        str(lines[1]),
        str(threads),
        "1" if distinct else "0",
    ]
    done = subprocess.run(
        command, capture_output=True, text=True, timeout=duration_s + 120
    )
    if done.returncode != 0:
        raise RuntimeError(f"wrk failed ({done.returncode}):\n{done.stderr}")
    return parse(done.stdout, done.stderr)

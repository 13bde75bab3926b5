"""Optional py-spy sampling of webhook-ingest during the measured run."""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

_LINE_NUMBER = re.compile(r":\d+\)$")
# Frames that hold every sample (interpreter start-up and the event loop).
_ROOT_FRAMES = re.compile(
    r"\((<frozen runpy>|.*asyncio/(runners|base_events|events)\.py"
    r"|.*__main__\.py|shared/service\.py)\)$"
)


@dataclass(frozen=True)
class HotSpots:
    samples: int
    self_time: list[tuple[str, float]]
    inclusive: list[tuple[str, float]]


def find_py_spy() -> str | None:
    """py-spy next to this Python (a venv install), else on PATH."""
    candidate = Path(sys.executable).with_name("py-spy")
    return str(candidate) if candidate.exists() else shutil.which("py-spy")


def start_py_spy(
    py_spy: str, pid: int, seconds: int, out: Path
) -> subprocess.Popen[bytes]:
    """Sample ``pid`` for ``seconds`` into a folded-stacks file at ``out``."""
    return subprocess.Popen(
        [
            py_spy,
            "record",
            "--pid",
            str(pid),
            "--duration",
            str(seconds),
            "--rate",
            "200",
            "--format",
            "raw",
            "--nonblocking",
            "--output",
            str(out),
        ],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )


def hot_spots(folded: Path, top: int = 15) -> HotSpots:
    """Self and inclusive share of samples per function, line numbers merged.

    Inclusive shares leave out start-up and event loop frames, which hold
    (nearly) every sample, so the list starts where the work does.
    """
    own: Counter[str] = Counter()
    within: Counter[str] = Counter()
    total = 0
    for line in folded.read_text().splitlines():
        stack, _, count_text = line.rpartition(" ")
        if not stack or not count_text.isdigit():
            continue
        count = int(count_text)
        total += count
        frames = [_LINE_NUMBER.sub(")", frame) for frame in stack.split(";")]
        own[frames[-1]] += count
        for frame in set(frames):
            within[frame] += count
    if total == 0:
        return HotSpots(0, [], [])
    work = [(f, n) for f, n in within.most_common() if not _ROOT_FRAMES.search(f)]
    return HotSpots(
        total,
        [(f, 100 * n / total) for f, n in own.most_common(top)],
        [(f, 100 * n / total) for f, n in work[:top]],
    )

"""File-based service discovery: each instance announces itself to Prometheus."""

from __future__ import annotations

import json
import os
import tempfile
from pathlib import Path


def target_file(sd_dir: Path, service: str, host: str, port: int) -> Path:
    safe_host = host.replace(":", "_").replace("/", "_")
    return sd_dir / f"{service}-{safe_host}-{port}.json"


def register_target(
    sd_dir: Path, service: str, host: str, port: int, labels: dict[str, str]
) -> Path:
    """Write this instance's target file atomically; return its path.

    Prometheus may read the folder at any moment, so the file appears whole:
    written under a temporary name in the same folder, then renamed.
    """
    sd_dir.mkdir(parents=True, exist_ok=True)
    path = target_file(sd_dir, service, host, port)
    document = [
        {"targets": [f"{host}:{port}"], "labels": {"service": service, **labels}}
    ]
    descriptor, temporary = tempfile.mkstemp(
        dir=sd_dir, prefix=f".{path.stem}.", suffix=".tmp"
    )
    try:
        with os.fdopen(descriptor, "w") as handle:
            json.dump(document, handle, indent=2)
            handle.flush()
            os.fsync(handle.fileno())
        os.chmod(temporary, 0o644)
        os.replace(temporary, path)
    except BaseException:
        Path(temporary).unlink(missing_ok=True)
        raise
    return path


def unregister_target(path: Path) -> None:
    path.unlink(missing_ok=True)

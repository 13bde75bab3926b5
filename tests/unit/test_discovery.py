"""Each instance's discovery file appears whole and goes away on shutdown."""

from __future__ import annotations

import json
from pathlib import Path

from shared.discovery import register_target, unregister_target


def test_a_target_file_names_the_instance_and_its_service(tmp_path: Path) -> None:
    """Prometheus reads host:port and the service label from it."""
    path = register_target(tmp_path / "sd", "webhook-ingest", "10.0.0.5", 4004, {})

    assert path.name == "webhook-ingest-10.0.0.5-4004.json"
    assert json.loads(path.read_text()) == [
        {"targets": ["10.0.0.5:4004"], "labels": {"service": "webhook-ingest"}}
    ]


def test_writing_leaves_no_temporary_files_behind(tmp_path: Path) -> None:
    """Only finished *.json files are ever in the folder."""
    for port in (1, 2, 3):
        register_target(tmp_path, "otp", "127.0.0.1", port, {"env": "dev"})
    assert sorted(p.name for p in tmp_path.iterdir()) == [
        "otp-127.0.0.1-1.json",
        "otp-127.0.0.1-2.json",
        "otp-127.0.0.1-3.json",
    ]


def test_unregistering_removes_the_file_and_tolerates_a_second_call(
    tmp_path: Path,
) -> None:
    """A stop after a stop is harmless."""
    path = register_target(tmp_path, "otp", "127.0.0.1", 4001, {})
    unregister_target(path)
    unregister_target(path)
    assert not path.exists()

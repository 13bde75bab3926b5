"""The rules pass promtool, and every alert is documented and tested.

The promtool checks need the binary and skip without it (CI installs it). The
checks on the rules' own content run everywhere: an alert without a severity,
a runbook section or a promtool case that fires it fails here.
"""

from __future__ import annotations

import re
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.support.prometheus import check_config, find_tool, lay_out

ROOT = Path(__file__).resolve().parents[2]
RULES_DIR = ROOT / "prometheus" / "rules"
RULE_TESTS_DIR = ROOT / "prometheus" / "tests"
RUNBOOK = ROOT / "docs" / "runbook.md"
RUNBOOK_URL_PREFIX = "docs/runbook.md#"
SEVERITIES = {"page", "ticket"}
ANNOTATIONS = ("summary", "description", "runbook_url")


def rule_files() -> list[Path]:
    files = sorted(RULES_DIR.glob("*.yml"))
    assert files, f"no rule files in {RULES_DIR}"
    return files


def rule_test_files() -> list[Path]:
    files = sorted(RULE_TESTS_DIR.glob("*.yml"))
    assert files, f"no promtool test files in {RULE_TESTS_DIR}"
    return files


def alerting_rules() -> Iterator[dict[str, Any]]:
    for path in rule_files():
        for group in yaml.safe_load(path.read_text())["groups"]:
            for rule in group["rules"]:
                if "alert" in rule:
                    yield rule


def alert_names() -> set[str]:
    return {rule["alert"] for rule in alerting_rules()}


def alert_cases() -> Iterator[dict[str, Any]]:
    """Every alert_rule_test entry of every promtool test file."""
    for path in rule_test_files():
        for group in yaml.safe_load(path.read_text())["tests"]:
            yield from group.get("alert_rule_test") or []


def github_slug(heading: str) -> str:
    """The anchor GitHub gives a heading: lower case, punctuation dropped."""
    text = heading.strip().lower()
    text = re.sub(r"[^\w\- ]", "", text)
    return text.replace(" ", "-")


def runbook_anchors() -> set[str]:
    anchors: set[str] = set()
    seen: dict[str, int] = {}
    in_code = False
    for line in RUNBOOK.read_text().splitlines():
        if line.startswith("```"):
            in_code = not in_code
            continue
        match = re.match(r"#{1,6} (.+)", line)
        if in_code or match is None:
            continue
        slug = github_slug(match.group(1))
        # GitHub numbers repeated headings: name, name-1, name-2, ...
        count = seen.get(slug, 0)
        seen[slug] = count + 1
        anchors.add(slug if count == 0 else f"{slug}-{count}")
    return anchors


def promtool(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [find_tool("promtool"), *args],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )


@pytest.mark.prometheus
def test_promtool_finds_and_accepts_every_rule_file_through_the_config(
    tmp_path: Path,
) -> None:
    """prometheus.yml's rules/*.yml glob, laid out as deployed, loads our files."""
    config = lay_out(tmp_path / "prometheus", "any-token")

    result = check_config(config)

    output = result.stdout + result.stderr
    assert result.returncode == 0, output
    assert f"SUCCESS: {len(rule_files())} rule files found" in output, output


@pytest.mark.prometheus
def test_promtool_accepts_every_rule_file() -> None:
    """Each file parses, and every expression and template is valid."""
    result = promtool("check", "rules", *map(str, rule_files()))

    assert result.returncode == 0, result.stdout + result.stderr


@pytest.mark.prometheus
def test_the_promtool_unit_tests_of_the_rules_pass() -> None:
    """Every alert fires and stays quiet where its tests say, with its annotations."""
    result = promtool("test", "rules", *map(str, rule_test_files()))

    assert result.returncode == 0, result.stdout + result.stderr


def test_every_alert_has_a_severity_a_summary_a_description_and_a_runbook() -> None:
    """Alertmanager routes on severity; people read the annotations."""
    problems = []
    for rule in alerting_rules():
        name = rule["alert"]
        severity = (rule.get("labels") or {}).get("severity")
        if severity not in SEVERITIES:
            problems.append(f"{name}: severity {severity!r} is not one of {SEVERITIES}")
        annotations = rule.get("annotations") or {}
        for key in ANNOTATIONS:
            if not str(annotations.get(key, "")).strip():
                problems.append(f"{name}: no {key} annotation")

    assert problems == []


def test_every_runbook_url_points_at_a_section_of_the_runbook() -> None:
    """Each link is docs/runbook.md#anchor and the runbook has that heading."""
    anchors = runbook_anchors()
    problems = []
    for rule in alerting_rules():
        url = str((rule.get("annotations") or {}).get("runbook_url", ""))
        if not url.startswith(RUNBOOK_URL_PREFIX):
            problems.append(f"{rule['alert']}: {url!r} is not {RUNBOOK_URL_PREFIX}…")
        elif url.removeprefix(RUNBOOK_URL_PREFIX) not in anchors:
            problems.append(f"{rule['alert']}: the runbook has no heading for {url}")

    assert problems == []


def test_every_alert_has_its_own_section_and_no_section_outlives_its_alert() -> None:
    """Sections are named after alerts, so a renamed alert cannot leave one behind."""
    alert_anchors = {name.lower() for name in alert_names()}
    prefix = "bitloot"
    section_anchors = {a for a in runbook_anchors() if a.startswith(prefix)}

    assert sorted(alert_anchors - section_anchors) == []
    assert sorted(section_anchors - alert_anchors) == []


def test_every_alert_has_a_promtool_case_that_fires_it_and_a_quiet_one() -> None:
    """A new alert without both kinds of test fails here, before it reaches anyone."""
    fired = set()
    quiet = set()
    for case in alert_cases():
        (fired if case.get("exp_alerts") else quiet).add(case["alertname"])
    alerts = alert_names()

    assert sorted(alerts - fired) == [], "alerts no promtool case fires"
    assert sorted(alerts - quiet) == [], "alerts no promtool case keeps quiet"
    assert sorted((fired | quiet) - alerts) == [], "cases for alerts that do not exist"

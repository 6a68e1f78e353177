"""The alert rules (deploy/helm/tickpipe/files/alerts/tickpipe-alerts.yaml): promtool accepts
them, its unit tests in tests/alerts/ pass, and every alert is tested both firing and quiet,
carries a severity and its annotations, and is documented."""

from __future__ import annotations

import re
import subprocess
from collections import defaultdict

import yaml

from tests.observability_helpers import (
    ALERT_RULES,
    README,
    alert_rules,
    alert_test_files,
    dashboard_files,
    exported_metrics,
    promql_metric_names,
    require_tool,
    sample_names,
)

SEVERITIES = {"critical", "warning", "info"}


def test_promtool_check_rules_accepts_the_rule_file() -> None:
    promtool = require_tool("promtool")
    result = subprocess.run(
        [promtool, "check", "rules", str(ALERT_RULES)],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert f"SUCCESS: {len(alert_rules())} rules found" in result.stdout


def test_promtool_unit_tests_pass() -> None:
    promtool = require_tool("promtool")
    files = alert_test_files()
    assert files, "no promtool tests in tests/alerts/"
    result = subprocess.run(
        [promtool, "test", "rules", *map(str, files)],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
        cwd=files[0].parent,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert "FAILED" not in result.stdout


def test_every_alert_has_a_severity_a_summary_and_a_description() -> None:
    rules = alert_rules()
    assert rules
    names = [rule["alert"] for rule in rules]
    assert len(names) == len(set(names)), "alert names must be unique"
    for rule in rules:
        assert re.fullmatch(r"Tickpipe[A-Z][A-Za-z]+", rule["alert"]), rule["alert"]
        assert rule.get("labels", {}).get("severity") in SEVERITIES, rule["alert"]
        annotations = rule.get("annotations", {})
        assert annotations.get("summary", "").strip(), rule["alert"]
        assert annotations.get("description", "").strip(), rule["alert"]


def test_every_alert_is_unit_tested_firing_and_not_firing() -> None:
    firing: dict[str, int] = defaultdict(int)
    quiet: dict[str, int] = defaultdict(int)
    for path in alert_test_files():
        doc = yaml.safe_load(path.read_text())
        for test in doc["tests"]:
            for case in test.get("alert_rule_test", []):
                if case.get("exp_alerts"):
                    firing[case["alertname"]] += 1
                else:
                    quiet[case["alertname"]] += 1
    names = {rule["alert"] for rule in alert_rules()}
    assert names - set(firing) == set(), "alerts never tested firing"
    assert names - set(quiet) == set(), "alerts never tested staying quiet"
    assert (set(firing) | set(quiet)) - names == set(), "tests of alerts that do not exist"


def test_alerts_use_only_metrics_the_services_export() -> None:
    known = sample_names(exported_metrics()) | {"up"}
    for rule in alert_rules():
        unknown = promql_metric_names(rule["expr"]) - known
        assert unknown == set(), f"{rule['alert']} uses metrics nobody exports: {unknown}"


def test_the_rule_file_is_plain_yaml_the_chart_can_ship_as_it_is() -> None:
    text = ALERT_RULES.read_text()
    # Helm must not template it: only Prometheus' own alert templates may appear.
    templates = re.findall(r"\{\{(.*?)\}\}", text)
    assert templates, "expected alert templates ({{ $labels… }})"
    for template in templates:
        assert "$labels" in template or "$value" in template, template
    assert list(yaml.safe_load(text)) == ["groups"]


def test_readme_documents_every_alert_and_dashboard() -> None:
    readme = README.read_text()
    for rule in alert_rules():
        row = re.search(rf"^\| `{rule['alert']}` \| (\w+) \|", readme, re.MULTILINE)
        assert row, f"README's alert table lacks {rule['alert']}"
        assert row.group(1) == rule["labels"]["severity"], rule["alert"]
    for path in dashboard_files():
        assert path.name in readme, f"README does not mention {path.name}"

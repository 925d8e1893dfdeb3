"""Monitoring as code: the Prometheus rules and Grafana dashboards under deploy/ are valid and
name only metrics the controller exports.

``promtool`` (Debian package ``prometheus``, installed by ``make system-deps``)
checks the rules, runs their unit tests, and parses every dashboard query (as
recording rules in a scratch file). Independently, every ``edgefleet_*`` name in
an expression must be a series of ``controller.core.metrics.Metrics``.
"""

from __future__ import annotations

import json
import re
import shutil
import subprocess
from pathlib import Path

import pytest
import yaml

from controller.core.metrics import Metrics
from controller.release.gauges import TufExpiryCollector

pytestmark = pytest.mark.unit
ROOT = Path(__file__).resolve().parents[2]
RULES = ROOT / "deploy" / "prometheus" / "edgefleet-rules.yml"
RULE_TESTS = ROOT / "deploy" / "prometheus" / "edgefleet-rules.test.yml"
DASHBOARDS = sorted((ROOT / "deploy" / "grafana" / "dashboards").glob("*.json"))
NAME = re.compile(r"\bedgefleet_[a-z0-9_]+")
SUFFIXES = {"counter": ("_total",), "histogram": ("_bucket", "_sum", "_count"), "gauge": ("",), "summary": ("_sum", "_count")}


def exported() -> set[str]:
    names = set()
    for fam in Metrics().registry.collect():
        names.update(fam.name + s for s in SUFFIXES[fam.type])
    names.update(TufExpiryCollector.NAMES)  # gauges read from the database at scrape time (registered by the app)
    return names


def rule_exprs() -> list[str]:
    doc = yaml.safe_load(RULES.read_text())
    return [r["expr"] for g in doc["groups"] for r in g["rules"]]


def dashboard_exprs() -> list[tuple[str, str]]:
    out = []
    for path in DASHBOARDS:
        d = json.loads(path.read_text())
        assert d["uid"] and d["title"] and d["panels"], path.name
        for p in d["panels"]:
            assert p["targets"], f"{path.name}: panel {p['title']!r} has no query"
            out.extend((f"{path.name}: {p['title']}", t["expr"]) for t in p["targets"])
    return out


def promtool() -> str:
    tool = shutil.which("promtool")
    assert tool, "promtool not found: run `make system-deps` (Debian package prometheus)"
    return tool


def test_there_are_dashboards_for_fleet_rollouts_drift_and_slos():
    assert {p.stem for p in DASHBOARDS} >= {"fleet-health", "rollout-progress", "drift", "slos"}


def test_every_expression_names_an_exported_metric():
    names = exported()
    assert "edgefleet_drift_detected" in names and "edgefleet_ingest_messages_total" in names
    exprs = [("rules", e) for e in rule_exprs()] + dashboard_exprs()
    assert len(exprs) > 20
    for where, expr in exprs:
        used = set(NAME.findall(expr))
        assert used, f"{where}: {expr!r} names no edgefleet metric"
        assert used <= names, f"{where}: {sorted(used - names)} not exported by the controller"


def test_promtool_checks_the_rules_and_runs_their_tests():
    tool = promtool()
    r = subprocess.run([tool, "check", "rules", str(RULES)], capture_output=True, text=True, timeout=60)
    assert r.returncode == 0, r.stdout + r.stderr
    r = subprocess.run(
        [tool, "test", "rules", RULE_TESTS.name], capture_output=True, text=True, timeout=60, cwd=RULE_TESTS.parent
    )
    assert r.returncode == 0, r.stdout + r.stderr


def test_promtool_checks_the_scrape_config_and_it_sends_a_metrics_token():
    """/metrics needs a token with the scrape-only ``metrics`` role (ADR 0069): the shipped scrape config sends one."""
    config = ROOT / "deploy" / "prometheus" / "prometheus.yml"
    doc = yaml.safe_load(config.read_text())
    (job,) = [j for j in doc["scrape_configs"] if j["job_name"] == "edgefleet-controller"]
    assert job["metrics_path"] == "/metrics"
    assert job["authorization"]["type"] == "Bearer" and job["authorization"]["credentials_file"]
    assert doc["rule_files"] == [RULES.name]
    # --syntax-only: the token file and rule files are the deployment's (the rules are checked above)
    cmd = [promtool(), "check", "config", "--syntax-only", config.name]
    r = subprocess.run(cmd, capture_output=True, text=True, timeout=60, cwd=config.parent)
    assert r.returncode == 0, r.stdout + r.stderr


def test_promtool_parses_every_dashboard_query(tmp_path):
    tool = promtool()
    rules = []
    for i, (_, expr) in enumerate(dashboard_exprs()):
        concrete = expr.replace("$__rate_interval", "5m")
        concrete = re.sub(r"\$\{?[a-z_]+\}?", "x", concrete)
        rules.append({"record": f"dashboard:query_{i}", "expr": concrete})
    path = tmp_path / "dashboards.rules.yml"
    path.write_text(yaml.safe_dump({"groups": [{"name": "dashboards", "rules": rules}]}))
    r = subprocess.run([tool, "check", "rules", str(path)], capture_output=True, text=True, timeout=60)
    assert r.returncode == 0, r.stdout + r.stderr

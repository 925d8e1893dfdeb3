"""The shipped systemd unit parses and keeps its hardening (checked with systemd-analyze when present)."""

import configparser
import shutil
import subprocess
from pathlib import Path

import pytest

pytestmark = pytest.mark.unit
UNIT = Path(__file__).resolve().parents[2] / "agent" / "systemd" / "edgefleet-agent.service"


def test_unit_runs_unprivileged_hardened_and_restarts_on_failure():
    cp = configparser.ConfigParser(strict=False, interpolation=None)
    cp.optionxform = str
    cp.read(UNIT)
    svc = cp["Service"]
    assert svc["User"] == "edgefleet" and svc["Restart"] == "on-failure"
    assert svc["ProtectSystem"] == "strict" and svc["NoNewPrivileges"] == "yes"
    assert svc["CapabilityBoundingSet"] == ""
    assert "--check-config" in svc["ExecStartPre"]


def test_systemd_analyze_finds_no_unknown_keys():
    exe = shutil.which("systemd-analyze")
    if exe is None:
        pytest.skip("systemd-analyze not installed")
    out = subprocess.run([exe, "verify", str(UNIT)], capture_output=True, text=True)
    problems = [ln for ln in out.stderr.splitlines() if "not executable" not in ln and ln.strip()]
    assert problems == []

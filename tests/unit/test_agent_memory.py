"""What the agent keeps resident: optional features load their libraries only when on."""

from __future__ import annotations

import os
import platform
import subprocess
import sys

import pytest

pytestmark = pytest.mark.unit

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def _run(code: str, **env: str) -> str:
    full = {**os.environ, "PYTHONPATH": ROOT}
    full.pop("MALLOC_ARENA_MAX", None)
    full.update(env)
    return subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, env=full).stdout.strip()


def test_daemon_import_leaves_identity_and_psutil_unloaded():
    code = (
        "import sys, agent.daemon, agent.telemetry.system\n"
        "print(','.join(sorted(m for m in ('cryptography.x509', 'psutil') if m in sys.modules)))"
    )
    assert _run(code) == ""


def test_identity_and_system_metrics_still_load_what_they_need(tmp_path):
    code = (
        "import sys\nfrom pathlib import Path\n"
        "from agent.identity import ensure_key, make_csr\n"
        "from agent.telemetry.system import SystemMetrics\n"
        f"csr = make_csr(ensure_key(Path({str(tmp_path / 'k.pem')!r})), 'dev-1')\n"
        f"s = SystemMetrics(Path({str(tmp_path)!r})).sample()\n"
        "print(csr.startswith(b'-----BEGIN CERTIFICATE REQUEST'), s['agent_rss_bytes'] > 0)"
    )
    assert _run(code) == "True True"


@pytest.mark.skipif(platform.libc_ver()[0] != "glibc", reason="malloc arenas are a glibc setting")
def test_arena_cap_applies_unless_the_operator_set_one():
    code = "from agent.memory import limit_malloc_arenas; print(limit_malloc_arenas())"
    assert _run(code) == "True"
    assert _run(code, MALLOC_ARENA_MAX="4") == "False"

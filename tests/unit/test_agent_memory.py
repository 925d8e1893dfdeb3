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
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=full)
    assert out.returncode == 0, out.stderr
    return out.stdout.strip()


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
        "print(csr.startswith(b'-----BEGIN CERTIFICATE REQUEST'), s['agent_rss_bytes'] > 0, 'psutil' in sys.modules)"
    )
    linux = os.path.isfile("/proc/self/statm")  # there the gauges come from /proc, psutil stays out (~0.7 MB)
    assert _run(code) == f"True True {not linux}"


def test_mqtt_link_leaves_urllib_request_unloaded_until_used():
    code = (
        "import sys\nimport agent.daemon\nfrom agent import deferred\n"
        "print(sorted(m for m in ('http.client', 'email.message') if m in sys.modules), deferred.loaded('urllib.request'))\n"
        "import urllib.request\n"
        "print(deferred.loaded('urllib.request'))\n"
        "from urllib.request import Request\n"  # the first use of a name loads the real module
        "print(deferred.loaded('urllib.request'), 'http.client' in sys.modules, urllib.request.Request is Request)"
    )
    assert _run(code).splitlines() == ["[] False", "False", "True True True"]


@pytest.mark.skipif(platform.libc_ver()[0] != "glibc", reason="malloc arenas are a glibc setting")
def test_arena_cap_applies_unless_the_operator_set_one():
    code = "from agent.memory import limit_malloc_arenas; print(limit_malloc_arenas())"
    assert _run(code) == "True"
    assert _run(code, MALLOC_ARENA_MAX="4") == "False"


def test_update_stack_loads_on_the_first_update_only(tmp_path):
    (tmp_path / "root.json").write_bytes(b'{"signed": {"_type": "root"}}')  # shape checked at load; not used here
    cfg = tmp_path / "agent.toml"
    cfg.write_text(
        f'device_id = "dev-1"\ndata_dir = "{tmp_path}"\nsocket_path = "{tmp_path / "a.sock"}"\n'
        f'director_public_keys = ["{"ab" * 32}"]\n'
        f'[image_repository]\nurl = "http://127.0.0.1:9/metadata/"\nroot = "{tmp_path / "root.json"}"\n'
        '[broker]\nhost = "127.0.0.1"\nport = 9\n'
    )
    code = (
        "import sys\nfrom pathlib import Path\n"
        "from agent.config import load_config\nfrom agent.host import ModelHost\nfrom agent.ota.store import Store\n"
        "from agent.ota.build import make_updater\n"
        f"cfg = load_config(Path({str(cfg)!r}))\n"
        "up = make_updater(cfg, Store(cfg.data_dir), ModelHost(), {}, lambda *a: None, lambda: None)\n"
        "stack = ('tuf', 'urllib3', 'securesystemslib', 'agent.ota.fetcher', 'agent.ota.trust')\n"
        "print(sorted(m for m in stack if m in sys.modules))\n"
        "repo = up.steps.image_repo\n"
        "print(type(repo).__name__, repo is up.steps.image_repo, repo.fetcher is up.steps.fetcher, 'tuf' in sys.modules)"
    )
    assert _run(code).splitlines() == ["[]", "ImageRepoClient True True True"]


def test_median_matches_the_usual_definition():
    from agent.ota.checks import median

    assert median([3.0]) == 3.0
    assert median([5.0, 1.0, 3.0]) == 3.0
    assert median([4.0, 1.0, 3.0, 2.0]) == 2.5


def test_http_server_module_loads_only_with_http_port():
    assert _run("import sys, agent.daemon; print('http.server' in sys.modules)") == "False"
    assert _run("import sys, agent.localapi.http; print('http.server' in sys.modules)") == "True"


def test_agent_with_http_port_builds_the_http_server(tmp_path):
    cfg = tmp_path / "agent.toml"
    cfg.write_text(
        f'device_id = "dev-1"\ndata_dir = "{tmp_path}"\nsocket_path = "{tmp_path / "a.sock"}"\n'
        f'director_public_keys = ["{"ab" * 32}"]\nhttp_port = 0\n'
        '[broker]\nhost = "127.0.0.1"\nport = 9\n[telemetry]\nsystem_metrics = false\n'
    )
    code = (
        "import sys\nfrom pathlib import Path\nfrom agent.config import load_config\nfrom agent.daemon import Agent\n"
        f"a = Agent(load_config(Path({str(cfg)!r})))\n"
        "print(type(a.http).__name__, a.http.port > 0, 'psutil' in sys.modules)\n"
        "a.http.start(); a.http.stop(); a.api.start(); a.api.stop()"
    )
    assert _run(code) == "HttpServer True False"


def test_an_isolated_agent_imports_no_signature_or_download_stack(tmp_path):
    code = (
        "import sys\nfrom agent.config import parse_config\nfrom agent.daemon import director_keys\n"
        "from agent.host import ModelHost\nfrom agent.ota.build import make_updater\nfrom agent.ota.store import Store\n"
        f"cfg = parse_config({{'device_id': 'd', 'data_dir': {str(tmp_path)!r}, 'director_public_keys': ['ab' * 32]}})\n"
        "up = make_updater(cfg, Store(cfg.data_dir), ModelHost(), director_keys(cfg), lambda *a: None, lambda: None)\n"
        "stack = ('cryptography', 'tuf', 'urllib3', 'securesystemslib')\n"
        "print(up.worker is not None, sorted(m for m in stack if m in sys.modules))"
    )
    assert _run(code) == "True []"


@pytest.mark.skipif(platform.libc_ver()[0] != "glibc", reason="malloc_trim is glibc's")
def test_trim_gives_freed_heap_back():
    code = (
        "from agent.memory import trim\n"
        "blocks = [bytearray(200) for _ in range(200_000)]\n"  # ~50 MB of small chunks on the heap
        "del blocks[:-1]\n"
        "print(trim())"
    )
    assert _run(code) == "True"

"""The local API as documented in docs/local-api.md: the Python client, the Node.js example (plain socket +
JSON lines) and ``edgefleet-agent status``, against a real model served over the real Unix socket."""

from __future__ import annotations

import json
import shutil
import subprocess
import time
from pathlib import Path

import pytest

from agent import cli as agent_cli
from agent.localapi.client import AgentClient
from agent.localapi.server import LocalApi, SocketServer
from tests.otalab import Lab

pytestmark = pytest.mark.integration
ROOT = Path(__file__).resolve().parents[2]
STATUS = {
    "device_id": "lab-dev",
    "agent_version": "0.1.0",
    "broker": {"connected": True, "host": "mqtt.example", "port": 8883, "last_contact": 0.0},
    "telemetry": {"queue_depth": 3, "windows": 7},
}


@pytest.fixture
def served(tmp_path, make_bundle):
    lab = Lab(tmp_path / "lab")
    up = lab.updater(tmp_path / "dev")
    up.apply(lab.desired("lab-dev", lab.publish(make_bundle(1))))

    def status() -> dict:
        models = {r: {"model": m.model, "version": m.version, "sha256": m.sha256, "runtime": m.runtime, "since": m.since}
                  for r, m in up.running().items()}  # fmt: skip
        return {**STATUS, "broker": {**STATUS["broker"], "last_contact": time.time()}, "ota": up.ota_status(), "models": models}

    sock = tmp_path / "agent.sock"
    server = SocketServer(sock, LocalApi(up.host, status=status))
    server.start()
    yield sock
    server.stop()
    lab.close()


def test_python_client_as_documented(served):
    with AgentClient(served) as agent:
        info = agent.info()["models"]["production"]
        r = agent.predict([[0.0] * 64])
    assert info["model"] == "digits" and info["inputs"][0]["shape"] == [1, 64]
    assert r["ok"] and r["version"] == 1 and len(r["outputs"]["probs"][0]) == 10


@pytest.mark.skipif(shutil.which("node") is None, reason="Node.js is not installed; the example is for apps written in it")
def test_node_example_speaks_the_protocol(served):
    out = subprocess.run(
        ["node", str(ROOT / "docs/examples/local_api_client.js"), str(served)], capture_output=True, text=True, timeout=60
    )
    assert out.returncode == 0, out.stderr
    got = json.loads(out.stdout)
    assert got["info"]["models"]["production"]["version"] == 1 and got["prediction"]["ok"]


def _config(tmp_path: Path, sock: Path) -> Path:
    cfg = tmp_path / "agent.toml"
    cfg.write_text(
        f'device_id = "lab-dev"\ndata_dir = "{tmp_path}/d"\nsocket_path = "{sock}"\ndirector_public_keys = ["{"0" * 64}"]\n'
    )
    return cfg


def test_status_command_reads_the_local_api(served, tmp_path, capsys):
    cfg = _config(tmp_path, served)
    assert agent_cli.main(["-c", str(cfg), "status"]) == 0
    text = capsys.readouterr().out
    assert "broker     connected to mqtt.example:8883" in text and "production: digits v1 (onnx" in text
    assert "ota        COMMITTED" in text and "3 windows waiting" in text
    assert agent_cli.main(["-c", str(cfg), "status", "--json"]) == 0
    s = json.loads(capsys.readouterr().out)
    assert s["models"]["production"]["version"] == 1 and s["telemetry"]["queue_depth"] == 3


def test_status_when_no_agent_runs(tmp_path, capsys):
    cfg = _config(tmp_path, tmp_path / "nobody.sock")
    assert agent_cli.main(["-c", str(cfg), "status"]) == 1
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "is the agent running?" in err

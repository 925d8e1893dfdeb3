"""A real aarch64 agent under qemu-user, end to end, with each runtime.

The agent's own code runs on an emulated Cortex-A72 in an arm64 Debian image
(scripts/qemu_rootfs.py): it enrols with a one-time token, connects to the
mTLS broker with the certificate it got, receives a signed assignment, checks
the bundle against the TUF image repository, passes its health check, serves
inferences over its Unix socket and reports telemetry the controller stores.
"""

from __future__ import annotations

import signal
import time
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest

from agent.localapi.client import AgentClient
from firmware_sim.modelgen import load_digits, make_tflite_bundle
from firmware_sim.procs import AgentProc, write_agent_config
from firmware_sim.qemu.rootfs import ensure_rootfs
from firmware_sim.qemu.runner import QemuPython
from firmware_sim.stack import Stack, start_stack

pytestmark = [pytest.mark.qemu, pytest.mark.e2e, pytest.mark.slow, pytest.mark.timeout(900)]
TFLITE = Path(__file__).resolve().parent.parent / "fixtures" / "digits_int8.tflite"


@pytest.fixture(scope="module")
def guest() -> QemuPython:
    return QemuPython(ensure_rootfs())  # cached; built on first use (make test builds it before pytest)


@pytest.fixture
def stack(tmp_path: Path) -> Iterator[Stack]:
    s = start_stack(tmp_path / "stack", secure=True)
    yield s
    s.stop()


def wait(what: str, cond, timeout: float = 120.0, agent: AgentProc | None = None, more=lambda: ""):
    """Poll ``cond`` until it holds; on a timeout, the agent's log ends the message, with every
    thread's stack (``SIGUSR1``: the agent's faulthandler) to show where a stuck agent is."""
    deadline = time.monotonic() + timeout
    while True:
        got = cond()
        if got:
            return got
        if time.monotonic() >= deadline:
            log = ""
            if agent is not None:
                if agent.alive():
                    agent.popen.send_signal(signal.SIGUSR1)
                    time.sleep(3)
                log = agent.log()[-12000:]
            raise AssertionError(f"timed out: {what}\n{more()}\n{log}")
        time.sleep(0.5)


@pytest.mark.parametrize("runtime", ["onnx", "tflite"])
def test_aarch64_agent_enrols_installs_serves_and_reports(
    runtime: str, guest: QemuPython, stack: Stack, tmp_path: Path, make_bundle
) -> None:
    dev = f"arm-{runtime}"
    bundle = make_bundle(1) if runtime == "onnx" else make_tflite_bundle(TFLITE.read_bytes(), version=1)
    api = stack.controller.client()
    mv = api.post("/v1/models", content=bundle).raise_for_status().json()
    stack.controller.approve(mv["name"], 1)
    api.post("/v1/devices", json={"id": dev, "arch": "aarch64", "hardware_class": "rpi4"}).raise_for_status()
    token = api.post("/v1/identity/tokens", json={"device_id": dev}).json()["token"]
    devices = tmp_path / "devices"
    cfg = write_agent_config(
        devices,
        dev,
        broker_host=stack.broker.host,
        broker_port=stack.broker.port,
        director_keys=[stack.director_key()],
        controller_url=stack.controller.url,
        extra=stack.identity_extra(devices / dev) + "[health]\nlive_window = 2.0\n[telemetry]\nwindow_s = 5\n",
    )

    enrolled = guest.run(["-m", "agent", "--config", str(cfg), "--enrol", token])
    assert enrolled.returncode == 0, enrolled.stderr[-3000:]
    assert "enrolled arm-" in enrolled.stdout
    assert (devices / dev / "identity" / "device.pem").exists()

    agent = guest.start_agent(devices, dev, config_path=cfg)
    try:
        device = wait("aarch64 agent online over mTLS", lambda: api.get(f"/v1/devices/{dev}").json()["online"], agent=agent)
        hw = api.get(f"/v1/devices/{dev}").json()["hardware"]
        assert hw["arch"] == "aarch64", hw

        r = api.put(f"/v1/devices/{dev}/desired", json={"model": mv["name"], "version": 1})
        assert r.status_code == 200, r.text
        actual = wait(
            "signed update installed and committed",
            lambda: (api.get(f"/v1/devices/{dev}").json()["actual"].get("production") or {}).get("version") == 1,
            agent=agent,
            more=lambda: f"device events: {api.get(f'/v1/devices/{dev}/events').json()}",
            timeout=300,  # emulated aarch64 on a loaded 2-core machine: 180 s was once not enough
        )
        assert actual and device

        def kinds() -> list[str]:
            return [e["kind"] for e in api.get(f"/v1/devices/{dev}/events").json()]

        assert "ota.rolled_back" not in wait("the committed event", lambda: "ota.committed" in kinds() and kinds(), agent=agent)

        x, y = load_digits()
        with AgentClient(agent.socket_path) as client:
            info = client.info()["models"]["production"]
            assert (info["runtime"], info["version"]) == (runtime, 1)
            preds = []
            for i in range(60):
                out = client.predict(x[i : i + 1].tolist())
                assert out["ok"], out
                preds.append(int(np.argmax(out["outputs"]["probs"][0])))
        assert float(np.mean(np.array(preds) == y[:60])) >= 0.8

        def stored() -> int:
            rows = api.get("/v1/telemetry", params={"model": mv["name"], "version": 1}).json()
            return sum(w["count"] for w in rows)

        assert wait("telemetry windows with the 60 inferences stored", lambda: stored() >= 60, timeout=90, agent=agent)
        assert agent.alive(), agent.log()[-3000:]
    finally:
        agent.stop()
        api.close()

"""Captured samples across a wiped device and a late label (real agents in-process, real broker, real int8 ONNX
model, real Unix socket, real controller process): nothing is dropped, nothing is sent twice.

Uploads are driven by the test (``Uploader.upload_once``, the upload thread's own step) so that each batch holds
exactly the samples the test made: the batch boundaries, and so the batch names, are the same in each generation.
"""

from __future__ import annotations

import hashlib
import json
import shutil
import sqlite3
import time
from pathlib import Path

import msgspec
import pytest

from agent import identity
from agent.config import AgentConfig, parse_config
from agent.daemon import Agent
from agent.localapi.client import AgentClient
from agent.runtime import load_model
from controller.pipeline import datasets as dsets
from firmware_sim.modelgen import load_digits
from firmware_sim.procs import start_controller
from firmware_sim.telemetry_rx import director_key_hex
from shared import bundle as bundle_fmt

pytestmark = [pytest.mark.integration, pytest.mark.slow]
DEVICES = ("gen-wipe", "gen-restore", "gen-label")


def wait_until(cond, timeout, what):
    deadline = time.monotonic() + timeout
    while not cond():
        assert time.monotonic() < deadline, what
        time.sleep(0.05)


@pytest.fixture(scope="module")
def controller(mosquitto, tmp_path_factory, make_bundle):
    proc = start_controller(tmp_path_factory.mktemp("ctl"), broker_host=mosquitto.host, broker_port=mosquitto.port)
    with proc.client() as api:
        assert api.post("/v1/models", content=make_bundle(1)).status_code == 201  # its telemetry is taken
        for d in DEVICES:
            assert api.post("/v1/devices", json={"id": d}).status_code == 201
    yield proc
    proc.stop()


def agent_config(controller, mosquitto, tmp_path: Path, device: str) -> AgentConfig:
    ident = tmp_path / "identity"  # the device's identity is kept; its data directory is what gets wiped
    with controller.client() as api:
        token = api.post("/v1/identity/tokens", json={"device_id": device}).json()["token"]
    identity.enrol(controller.url, token, device, identity.IdentityPaths(ident))
    cfg = parse_config(
        {
            "device_id": device, "data_dir": str(tmp_path / "agent"), "director_public_keys": [director_key_hex()],
            "broker": {"host": mosquitto.host, "port": mosquitto.port, "reconnect_min": 0.2, "reconnect_max": 1},
            "telemetry": {"window_s": 3600, "windows_per_publish": 1},
            "capture": {"enabled": True, "url": controller.url, "rate": 1.0, "upload_interval_s": 3600},
            "identity": {"directory": str(ident)},
        }
    )  # fmt: skip
    # [identity] also means mTLS to the broker; this test's broker is the plain one, so only HTTP is signed.
    msgspec.structs.force_setattr(cfg, "broker", msgspec.structs.replace(cfg.broker, ca_file=None, cert_file=None, key_file=None))
    return cfg


def start_agent(cfg: AgentConfig, tmp_path: Path, raw: bytes) -> Agent:
    b = bundle_fmt.read(raw)
    sha = hashlib.sha256(raw).hexdigest()
    path = tmp_path / f"{sha}.onnx"
    path.write_bytes(b.model)
    agent = Agent(cfg)
    agent.host.swap("production", load_model(b.manifest, path, sha))
    agent.start()
    return agent


def predict(agent: Agent, cfg: AgentConfig, rows: range) -> list[str]:
    """Serve ``rows`` of the digits; each is captured (rate 1). Returns their prediction ids."""
    x, _ = load_digits()
    with AgentClient(cfg.socket_path) as client:
        pids = []
        for i in rows:
            out = client.predict(x[i : i + 1].tolist())
            assert out["ok"], out
            pids.append(out["prediction_id"])
    spool = agent.telemetry.spool
    assert spool is not None
    agent.telemetry.flush()
    wait_until(lambda: spool.pending() >= len(pids), 10, "samples not spooled")
    return pids


def stored_lines(controller, device: str) -> list[dict]:
    folder = controller.data_dir / "capture" / device
    return [json.loads(x) for p in sorted(folder.glob("*.jsonl")) for x in p.read_text().splitlines()]


def dataset(controller, tmp_path: Path, device: str, labels=None) -> dsets.Dataset:
    root = tmp_path / "datasets"
    rep = dsets.export_captures(controller.data_dir / "capture", root, {device: dsets.DeviceInfo(())})
    assert rep.skipped == {}
    ds = dsets.snapshot(root, dsets.Query("digits"), labels=labels)
    keep = ds.device_id == device
    assert keep.any()
    return ds


def rows_of(ds: dsets.Dataset, device: str) -> set[tuple[str, int]]:
    return {(s, int(i)) for d, s, i in zip(ds.device_id, ds.spool, ds.sample_id, strict=True) if d == device}


def test_a_wiped_device_keeps_uploading_and_both_generations_are_distinct_rows(controller, mosquitto, tmp_path, make_bundle):
    device = "gen-wipe"
    cfg = agent_config(controller, mosquitto, tmp_path, device)
    uploads = []
    for _generation in range(2):
        agent = start_agent(cfg, tmp_path, make_bundle(1))
        try:
            predict(agent, cfg, range(3))
            up = agent.telemetry.uploader
            assert up is not None and up.upload_once()
            assert agent.telemetry.spool is not None and agent.telemetry.spool.pending() == 0
            uploads.append(up)
        finally:
            agent.stop()
        shutil.rmtree(cfg.data_dir)  # the device is re-flashed: its spool starts again at sample id 1

    files = sorted(p.name for p in (controller.data_dir / "capture" / device).glob("*.jsonl"))
    assert len(files) == 2, files  # the second generation's batch was stored, not refused as a clash
    statuses = [u.status() for u in uploads]
    lines = stored_lines(controller, device)
    assert len(lines) == 6 and sorted(x["id"] for x in lines) == [1, 1, 2, 2, 3, 3]
    assert [u["uploaded"] for u in statuses] == [3, 3] and all(u["dropped"] == u["conflicts"] == 0 for u in statuses)
    assert statuses[0]["spool"] != statuses[1]["spool"]
    assert {f.split("-")[0] for f in files} == {u["spool"] for u in statuses}
    with controller.client() as api:
        assert api.get(f"/v1/capture/{device}").json()["samples"] == 6
    ds = dataset(controller, tmp_path, device)
    assert len(rows_of(ds, device)) == 6  # both generations' rows, distinct


def test_a_device_restored_from_a_backup_sends_a_clashing_batch_again_under_a_fresh_spool_id(
    controller, mosquitto, tmp_path, make_bundle
):
    """A data directory restored from a backup reuses its spool id and sample ids: the controller refuses the
    clashing batch (409, a stored batch is never replaced) and the agent sends it again under a fresh spool id."""
    device = "gen-restore"
    cfg = agent_config(controller, mosquitto, tmp_path, device)
    backup = tmp_path / "backup"
    agent = start_agent(cfg, tmp_path, make_bundle(1))
    agent.stop()
    shutil.copytree(cfg.data_dir, backup)  # the spool exists, with its id, and holds nothing yet
    uploads = []
    for _generation in range(2):
        agent = start_agent(cfg, tmp_path, make_bundle(1))
        try:
            predict(agent, cfg, range(2))
            up = agent.telemetry.uploader
            assert up is not None and up.upload_once()
            uploads.append(up)
        finally:
            agent.stop()
        shutil.rmtree(cfg.data_dir)
        shutil.copytree(backup, cfg.data_dir)
    assert len(list((controller.data_dir / "capture" / device).glob("*.jsonl"))) == 2  # none dropped
    statuses = [u.status() for u in uploads]
    assert statuses[0]["conflicts"] == 0 and statuses[1]["conflicts"] == 1
    assert statuses[1]["dropped"] == 0 and statuses[1]["uploaded"] == 2
    assert len(rows_of(dataset(controller, tmp_path, device), device)) == 4


def test_a_sampled_prediction_labelled_later_is_uploaded_once_and_its_label_reaches_the_dataset(
    controller, mosquitto, tmp_path, make_bundle
):
    device = "gen-label"
    cfg = agent_config(controller, mosquitto, tmp_path, device)
    _, y = load_digits()
    agent = start_agent(cfg, tmp_path, make_bundle(1))
    try:
        wait_until(lambda: agent.link.connected, 20, "agent never connected")
        spool, up = agent.telemetry.spool, agent.telemetry.uploader
        assert spool is not None and up is not None
        early, late = predict(agent, cfg, range(2))
        with AgentClient(cfg.socket_path) as client:
            assert client.feedback(early, int(y[0]))["ok"]  # labelled while its sample waits in the spool
        assert spool.pending() == 2  # labelled in place: no second copy
        assert up.upload_once() and spool.pending() == 0
        with AgentClient(cfg.socket_path) as client:
            assert client.feedback(late, int(y[1]))["ok"]  # labelled after its sample was uploaded
        assert spool.pending() == 0 and not up.upload_once()  # only the label goes, with the telemetry
        agent.telemetry.close_window()

        def labels() -> dict[str, int]:
            with sqlite3.connect(controller.data_dir / "controller.db") as db:
                rows = db.execute("SELECT prediction_id, label FROM predictionlabel WHERE device_id = ?", (device,))
                return dict(rows.fetchall())

        wait_until(lambda: late in labels(), 20, "the late label never reached the controller")
    finally:
        agent.stop()
    assert labels() == {late: int(y[1])}  # the first label was counted in its window; the second as a late label, once
    lines = stored_lines(controller, device)
    assert sorted(x["prediction_id"] for x in lines) == sorted([early, late])  # each prediction uploaded once
    assert {x["prediction_id"]: x["label"] for x in lines} == {early: int(y[0]), late: None}
    ds = dataset(controller, tmp_path, device, labels=dsets.labels_table((device, p, lab) for p, lab in labels().items()))
    mine = ds.device_id == device
    assert int(mine.sum()) == 2 and sorted(ds.label[mine].tolist()) == sorted([int(y[0]), int(y[1])])

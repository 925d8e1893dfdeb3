"""The demo: a small local fleet receiving, verifying and serving a model.

Starts a private Mosquitto, the controller and a few real agent processes,
builds real int8 models, registers them, assigns them, shows what each device
reports and serves, shows a tampered bundle being refused, then rolls out v2.
"""

from __future__ import annotations

import shutil
import time
from collections.abc import Callable
from pathlib import Path

import httpx
import numpy as np
from rich.console import Console
from rich.table import Table

from agent.localapi.client import AgentClient
from firmware_sim.modelgen import load_digits, make_onnx_bundle
from firmware_sim.mosquitto import MosquittoProcess
from firmware_sim.procs import AgentProc, ControllerProc, start_agent, start_controller

console = Console()


def _wait(what: str, cond: Callable[[], bool], timeout: float = 60.0) -> None:
    deadline = time.monotonic() + timeout
    with console.status(what):
        while not cond():
            if time.monotonic() > deadline:
                raise TimeoutError(f"timed out: {what}")
            time.sleep(0.2)


def _fleet_table(api: httpx.Client, title: str) -> Table:
    t = Table("device", "online", "desired", "actual (reported by the device)", title=title)
    for d in api.get("/v1/devices").json():
        want, have = d["desired"].get("production"), d["actual"].get("production")
        t.add_row(
            d["id"],
            "[green]yes[/]" if d["online"] else "[red]no[/]",
            f"{want['model']} v{want['version']}" if want else "-",
            f"{have['model']} v{have['version']} ({have['sha256'][:10]}…)" if have else "-",
        )
    return t


def _actual_versions(api: httpx.Client) -> dict[str, int | None]:
    return {d["id"]: (d["actual"].get("production") or {}).get("version") for d in api.get("/v1/devices").json()}


def run(devices: int = 3, workdir: Path = Path(".demo")) -> None:
    shutil.rmtree(workdir, ignore_errors=True)
    workdir.mkdir(parents=True)
    console.rule("[bold]edgefleet demo")
    broker = MosquittoProcess(workdir / "broker")
    broker.start()
    console.print(f"• private Mosquitto on {broker.host}:{broker.port} (config {broker.conf_path})")
    controller: ControllerProc | None = None
    agents: list[AgentProc] = []
    try:
        controller = start_controller(workdir, broker_host=broker.host, broker_port=broker.port)
        console.print(f"• controller on {controller.url} (SQLite in {controller.data_dir})")
        with console.status("training and quantizing two int8 ONNX models on the 8x8 digits"):
            bundles = {v: make_onnx_bundle(version=v, epochs=40 * v) for v in (1, 2)}
        api = controller.client()
        for data in bundles.values():
            mv = api.post("/v1/models", content=data).raise_for_status().json()
            console.print(
                f"• registered [bold]{mv['name']} v{mv['version']}[/] ({mv['length']} bytes, sha256 {mv['sha256'][:12]}…)"
            )
            controller.approve(mv["name"], mv["version"], reason="demo: golden vectors and accuracy checked")
            console.print("  approved for production by a second principal (the registrant cannot approve its own model)")
        key = api.get("/v1/trust").json()["director_public_key"]
        for i in range(1, devices + 1):
            device_id = f"pi-{i:04d}"
            api.post("/v1/devices", json={"id": device_id}).raise_for_status()
            agents.append(
                start_agent(
                    workdir / "devices",
                    device_id,
                    broker_host=broker.host,
                    broker_port=broker.port,
                    director_keys=[key],
                    controller_url=controller.url,  # pins the image repository's TUF root
                    extra="[health]\nlive_window = 2.0\n[telemetry]\nwindow_s = 10\n",
                )
            )
        console.print(f"• started {devices} agent processes (each pins the director key {key[:12]}… and the TUF root)")
        _wait("agents coming online", lambda: all(d["online"] for d in api.get("/v1/devices").json()))

        for a in agents:
            api.put(f"/v1/devices/{a.device_id}/desired", json={"model": "digits", "version": 1}).raise_for_status()
        console.print("• assigned digits v1 to every device (signed desired state, retained on MQTT)")
        _wait("devices downloading, verifying and health-checking v1", lambda: set(_actual_versions(api).values()) == {1})
        console.print(_fleet_table(api, "after rollout of v1"))

        x, y = load_digits()
        for a in agents:
            with AgentClient(a.socket_path) as client:
                preds = [int(np.argmax(client.predict(x[i : i + 1].tolist())["outputs"]["probs"][0])) for i in range(100)]
            acc = float(np.mean(np.array(preds) == y[:100]))
            console.print(f"  {a.device_id}: 100 local inferences over the Unix socket, accuracy {acc:.0%}")

        console.rule("a tampered bundle")
        victim = agents[0]
        v2 = next(m for m in api.get("/v1/models").json() if m["version"] == 2)
        original = api.get(f"/v1/bundles/{v2['sha256']}").raise_for_status().content  # fills the replica's bundle cache
        blob = controller.data_dir / "cache" / "bundles" / f"{v2['sha256']}.tar"  # the copy this replica serves
        mid = len(original) // 2
        blob.write_bytes(original[:mid] + bytes(b ^ 0xFF for b in original[mid : mid + 16]) + original[mid + 16 :])
        api.put(f"/v1/devices/{victim.device_id}/desired", json={"model": "digits", "version": 2}).raise_for_status()

        def rejected() -> bool:
            return any(e["kind"] == "ota.rejected" for e in api.get(f"/v1/devices/{victim.device_id}/events").json())

        _wait("the device checking the bundle", rejected)
        ev = next(e for e in api.get(f"/v1/devices/{victim.device_id}/events").json() if e["kind"] == "ota.rejected")
        console.print(f"• {victim.device_id} refused it: [red]{ev['message']}[/]")
        with AgentClient(victim.socket_path) as client:
            console.print(f"• and keeps serving v{client.predict(x[:1].tolist())['version']}")
        blob.write_bytes(original)

        console.rule("rollout of v2")
        for a in agents:
            api.put(f"/v1/devices/{a.device_id}/desired", json={"model": "digits", "version": 2}).raise_for_status()
        _wait("devices swapping to v2 without stopping inference", lambda: set(_actual_versions(api).values()) == {2})
        console.print(_fleet_table(api, "after rollout of v2"))
        v = api.get("/v1/audit/verify").json()
        verdict = "[green]intact[/]" if v["ok"] else f"[red]BROKEN: {v['problems']}[/]"
        console.print(f"• audit log: {v['entries']} hash-chained entries (who decided what, on what evidence), {verdict}")
        console.print("[bold green]demo complete:[/] models delivered, verified, served; tampering refused")
    finally:
        for a in agents:
            a.stop()
        if controller is not None:
            controller.stop()
        broker.stop()

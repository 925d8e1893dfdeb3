"""A whole simulation: broker, controller (SQLite), an HTTP relay, models, and a fleet of simulated devices.

Used by ``edgefleet-sim run`` (scenarios), the demo and ``scripts/bench.py fleet``.
Devices download bundles and TUF metadata through the HTTP relay (the controller's
public URL), so download faults act on the real agent's fetcher. ``secure=True``
runs the broker of a deployment (mTLS, ACL, CRL: ``firmware_sim.stack.secure_broker``)
and enrols the devices with one-time tokens (``firmware_sim.fleet``).
"""

from __future__ import annotations

import platform
import random
import sqlite3
import time
from pathlib import Path
from typing import Any

import httpx

from firmware_sim.fleet import DeviceSpec, Fleet, GroupSpec
from firmware_sim.mosquitto import MosquittoProcess
from firmware_sim.netfault import Relay
from firmware_sim.procs import ControllerProc, start_controller
from firmware_sim.stack import secure_broker

__all__ = ["COHORT", "SimRun", "devices_for", "stored_seqs"]
COHORT = "fleet"
MODEL = "digits"


def devices_for(group: str, n: int, profiles: dict[str, float], app: dict[str, float], seed: int = 0) -> list[DeviceSpec]:
    """``n`` devices named ``<group>-0000``..., profiles drawn by the given shares (deterministic)."""
    rng = random.Random(f"{group}/{seed}")  # noqa: S311 - a reproducible fleet, not a secret
    names, weights = list(profiles), list(profiles.values())
    return [DeviceSpec(f"{group}-{i:04d}", rng.choices(names, weights)[0], seed * 100_003 + i, dict(app)) for i in range(n)]


class SimRun:
    def __init__(
        self,
        workdir: Path,
        *,
        controller_env: dict[str, str] | None = None,
        agent: dict[str, Any] | None = None,
        start_spread_s: float = 0.0,
        secure: bool = False,
    ) -> None:
        self.workdir = workdir
        self.secure = secure
        self.controller_env = controller_env or {}
        self.agent = agent or {}
        self.start_spread_s = start_spread_s
        self.broker: MosquittoProcess | None = None
        self.controller: ControllerProc | None = None
        self.http: Relay | None = None
        self.fleet: Fleet | None = None
        self.versions: dict[int, dict[str, Any]] = {}  # registered version -> its registry record

    # -- stack -------------------------------------------------------------------
    def start_stack(self) -> None:
        self.workdir.mkdir(parents=True, exist_ok=True)
        env: dict[str, str] = {}
        if self.secure:
            config, env, _ = secure_broker(self.workdir)
            self.broker = MosquittoProcess(self.workdir / "broker", config)
        else:
            self.broker = MosquittoProcess(self.workdir / "broker")
        self.broker.start()
        self.http = Relay("127.0.0.1", 1, name="http")  # target set once the controller has its port
        env = {**env, "EDGEFLEET_PUBLIC_URL": self.http.url, **self.controller_env}
        self.controller = start_controller(
            self.workdir, broker_host=self.broker.host, broker_port=self.broker.port, env=env, timeout=120
        )
        self.http.target = ("127.0.0.1", int(self.controller.url.rsplit(":", 1)[1]))

    def api(self) -> httpx.Client:
        assert self.controller is not None
        return self.controller.client()

    def register(self, bundle: bytes, approve: bool = True) -> int:
        assert self.controller is not None
        with self.api() as api:
            r = api.post("/v1/models", content=bundle)
            _ok(r)
            rec = dict(r.json())
        if approve:
            self.controller.approve(rec["name"], rec["version"], reason="simulation")
        self.versions[int(rec["version"])] = rec
        return int(rec["version"])

    # -- fleet -------------------------------------------------------------------
    def start_fleet(self, groups: list[GroupSpec]) -> Fleet:
        assert self.broker is not None and self.controller is not None
        fleet = Fleet(
            self.workdir,
            broker=(self.broker.host, self.broker.port),
            controller=self.controller,
            agent=self.agent,
            http_relay=self.http,
            start_spread_s=self.start_spread_s,
            secure=self.secure,
        )
        for g in groups:
            fleet.add(g)
        fleet.enrol()
        with self.api() as api:
            _ok(api.post("/v1/cohorts", json={"name": COHORT, "members": fleet.device_ids}))
        fleet.start()
        self.fleet = fleet
        return fleet

    def assign(self, version: int) -> None:
        with self.api() as api:
            _ok(api.put(f"/v1/cohorts/{COHORT}/desired", json={"model": MODEL, "version": version}))

    def devices(self) -> dict[str, dict[str, Any]]:
        """The controller's view of every device (paged)."""
        out: dict[str, dict[str, Any]] = {}
        with self.api() as api:
            offset = 0
            while True:
                r = api.get("/v1/devices", params={"limit": 250, "offset": offset}, timeout=120)
                _ok(r)
                page = r.json()
                out.update({d["id"]: d for d in page})
                if len(page) < 250:
                    return out
                offset += 250

    def actual_versions(self) -> dict[str, int | None]:
        return {k: (d["actual"].get("production") or {}).get("version") for k, d in self.devices().items()}

    def wait_versions(self, ok: Any, timeout: float, what: str) -> None:
        deadline = time.monotonic() + timeout
        while True:
            try:
                got = self.actual_versions()
            except httpx.TimeoutException:  # a busy controller: ask again, within the same deadline
                got = {}
            if self.fleet is not None:
                got = {k: v for k, v in got.items() if k in set(self.fleet.device_ids)}
            if got and all(ok(v) for v in got.values()) and (self.fleet is None or len(got) == len(self.fleet.device_ids)):
                return
            if time.monotonic() > deadline:
                counts: dict[Any, int] = {}
                for v in got.values():
                    counts[v] = counts.get(v, 0) + 1
                raise TimeoutError(f"timed out after {timeout:.0f}s waiting for {what}: versions {counts}")
            time.sleep(1.0)

    def stop(self) -> None:
        if self.fleet is not None:
            self.fleet.stop()
        if self.controller is not None:
            self.controller.stop()
        if self.broker is not None:
            self.broker.stop()
        if self.http is not None:
            self.http.close()

    def hostinfo(self) -> dict[str, Any]:
        import os

        return {"cpus": os.cpu_count(), "machine": platform.machine(), "load1": round(os.getloadavg()[0], 2)}


def stored_seqs(controller_db: Path, devices: list[str]) -> dict[str, Any]:
    """Per device, a predicate telling whether a telemetry seq was stored (the controller's dedupe cursor).

    Read from the controller's SQLite database: the highest seq merged, the bitmap of the 62
    below it, and the gaps (seqs below the bitmap that never arrived).
    """
    db = sqlite3.connect(f"file:{controller_db}?mode=ro", uri=True, timeout=30)
    try:
        cur = {r[0]: (int(r[1]), int(r[2])) for r in db.execute("SELECT device_id, high_seq, seen_bits FROM telemetrycursor")}
        gaps: dict[str, list[tuple[int, int]]] = {}
        for dev, lo, hi in db.execute("SELECT device_id, lo, hi FROM telemetrygap"):
            gaps.setdefault(dev, []).append((int(lo), int(hi)))
    finally:
        db.close()

    def make(dev: str) -> Any:
        c = cur.get(dev)
        g = gaps.get(dev, [])

        def has(seq: int) -> bool:
            if c is None or seq > c[0]:
                return False
            off = c[0] - seq
            if off < 62:
                return bool((c[1] >> off) & 1)
            return not any(lo <= seq <= hi for lo, hi in g)

        return has

    return {d: make(d) for d in devices}


def _ok(r: httpx.Response) -> None:
    if r.status_code >= 400:
        raise RuntimeError(f"{r.request.method} {r.request.url.path}: HTTP {r.status_code}: {r.text[:500]}")

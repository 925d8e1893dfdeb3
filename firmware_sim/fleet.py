"""A simulated fleet: groups of devices, each group in one or more worker processes.

A group is the unit faults apply to: its devices share a hardware profile mix, a
network path (direct, or through a :class:`~firmware_sim.netfault.Relay`), a clock
(skewed per process) and, for power loss, the processes that are killed. The
devices are registered with the controller, get agent configs that pin its director
key and TUF root, and run in ``python -m firmware_sim.worker`` processes.

A ``secure`` fleet is enrolled as real devices are: the operator makes a one-time
token per device (``POST /v1/identity/tokens``), the device makes its key and
enrols with the token (``agent.identity.enrol``, what ``edgefleet-agent --enrol``
runs; done by the worker before its agents start), then connects to the broker
with mTLS and signs its requests to the controller (captured samples) with that key.
"""

from __future__ import annotations

import json
import os
import platform
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx

from firmware_sim.netfault import Relay
from firmware_sim.procs import REPO

__all__ = ["DeviceSpec", "Fleet", "GroupSpec", "WorkerProc"]


@dataclass(frozen=True)
class DeviceSpec:
    id: str
    profile: str
    seed: int
    app: dict[str, float] = field(default_factory=dict)


@dataclass
class GroupSpec:
    name: str
    devices: list[DeviceSpec]
    processes: int = 1
    relay: bool = False  # MQTT through a relay this group's network faults act on
    clock_skew_s: float = 0.0
    data_root: Path | None = None  # e.g. a small file system for disk-full faults
    pause_at: str | None = None  # the test pause hook (power loss at an OTA point), e.g. "VERIFYING@2"


@dataclass
class WorkerProc:
    name: str
    group: str
    spec_path: Path
    stats_path: Path
    log_path: Path
    devices: list[str]
    popen: subprocess.Popen[bytes] | None = None

    def alive(self) -> bool:
        return self.popen is not None and self.popen.poll() is None

    def start(self) -> None:
        self._close_pipe()  # a restarted worker gets a new pipe
        env = dict(os.environ)
        env["PYTHONPATH"] = str(REPO) + os.pathsep + env.get("PYTHONPATH", "")
        with open(self.log_path.with_suffix(".out"), "ab") as out:
            self.popen = subprocess.Popen(
                [sys.executable, "-m", "firmware_sim.worker", str(self.spec_path)],
                stdin=subprocess.PIPE, stdout=out, stderr=subprocess.STDOUT, env=env, cwd=REPO,
            )  # fmt: skip

    def send(self, cmd: dict[str, Any]) -> None:
        if self.popen is None or self.popen.stdin is None or not self.alive():
            return
        try:
            self.popen.stdin.write(json.dumps(cmd).encode() + b"\n")
            self.popen.stdin.flush()
        except (BrokenPipeError, OSError):
            pass

    def kill(self) -> None:
        """SIGKILL: a power cut of every device in this process."""
        if self.popen is not None and self.alive():
            self.popen.send_signal(signal.SIGKILL)
            self.popen.wait()
        self._close_pipe()

    def _close_pipe(self) -> None:
        if self.popen is not None and self.popen.stdin is not None and not self.alive():
            try:
                self.popen.stdin.close()
            except OSError:
                pass

    def stop(self, timeout: float = 120.0) -> None:
        if self.popen is None or not self.alive():
            self._close_pipe()
            return
        self.send({"op": "stop"})
        try:
            self.popen.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            self.popen.terminate()
            try:
                self.popen.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.kill()
        self._close_pipe()

    def output_tail(self, chars: int = 1500) -> str:
        """The end of what the process printed (a traceback when it died)."""
        try:
            return self.log_path.with_suffix(".out").read_text(errors="replace")[-chars:]
        except OSError:
            return ""

    def stats(self) -> dict[str, Any]:
        try:
            return dict(json.loads(self.stats_path.read_bytes()))
        except (OSError, ValueError):
            return {}


class Fleet:
    """Devices of the given groups against a running stack (broker + controller)."""

    def __init__(
        self,
        workdir: Path,
        *,
        broker: tuple[str, int],
        controller: Any,  # firmware_sim.procs.ControllerProc
        agent: dict[str, Any] | None = None,  # agent config tables merged into every device's ([telemetry], [health]...)
        http_relay: Relay | None = None,
        start_spread_s: float = 0.0,
        log_level: str = "WARNING",
        secure: bool = False,  # enrol with one-time tokens, mTLS to the broker (the broker must be the secure one)
    ) -> None:
        self.workdir = workdir
        self.broker = broker
        self.controller = controller
        self.agent = agent or {}
        self.http_relay = http_relay
        self.start_spread_s = start_spread_s
        self.log_level = log_level
        self.secure = secure
        self.groups: dict[str, GroupSpec] = {}
        self.relays: dict[str, Relay] = {}
        self.workers: list[WorkerProc] = []
        self.seqs_dir = workdir / "windows"  # per device: the seq of every window it committed
        self.seqs_dir.mkdir(parents=True, exist_ok=True)
        self._key = ""
        self._enrolled: set[str] = set()
        self._tokens: dict[str, str] = {}  # device -> its one-time enrolment token (secure fleets)
        self._root: tuple[str, Path] | None = None

    # -- set-up ------------------------------------------------------------------
    def add(self, group: GroupSpec) -> None:
        if group.name in self.groups:
            raise ValueError(f"group {group.name!r} defined twice")
        self.groups[group.name] = group

    @property
    def device_ids(self) -> list[str]:
        return [d.id for g in self.groups.values() for d in g.devices]

    @property
    def public_url(self) -> str:
        """The controller as devices reach it (through the HTTP relay when there is one)."""
        return str(self.http_relay.url if self.http_relay else self.controller.url)

    def enrol(self) -> None:
        """Register every device with the controller (hardware class = its profile), make the enrolment
        tokens of a secure fleet, and fetch the trust roots."""
        from firmware_sim.profiles import profile

        with self.controller.client() as api:
            self._key = str(api.get("/v1/trust").json()["director_public_key"])
            for g in self.groups.values():
                if g.name in self._enrolled:
                    continue
                self._enrolled.add(g.name)
                for d in g.devices:
                    p = profile(d.profile)
                    r = api.post("/v1/devices", json={"id": d.id, "arch": platform.machine(), "hardware_class": p.name})
                    if r.status_code not in (201, 409):
                        raise RuntimeError(f"cannot enrol {d.id}: HTTP {r.status_code}: {r.text[:300]}")
                    if self.secure:
                        r = api.post("/v1/identity/tokens", json={"device_id": d.id})
                        if r.status_code != 201:
                            raise RuntimeError(f"no enrolment token for {d.id}: HTTP {r.status_code}: {r.text[:300]}")
                        self._tokens[d.id] = str(r.json()["token"])
        base = f"{self.public_url}/v1/tuf/metadata/"
        r = httpx.get(f"{self.controller.url}/v1/tuf/metadata/1.root.json", timeout=30)
        r.raise_for_status()
        root = self.workdir / "root.json"
        root.write_bytes(r.content)
        self._root = (base, root)

    def _device_config(self, d: DeviceSpec, data_dir: Path, port: int) -> dict[str, Any]:
        assert self._root is not None
        cfg: dict[str, Any] = {
            "device_id": d.id,
            "data_dir": str(data_dir),
            "director_public_keys": [self._key],
            "development": True,  # simulated devices: the power-loss fault uses the test pause hook
            "broker": {"host": self.broker[0], "port": port, "keepalive": 30, "reconnect_min": 1.0, "reconnect_max": 15.0},
            "image_repository": {"url": self._root[0], "root": str(self._root[1])},
            "health": {"live_window": 2.0, "live_inferences": 3, "latency_runs": 5},
            # The update stack in process: a child process per update per device (the default on a device,
            # for its memory) would cost a thousand Python start-ups when a fleet is assigned a version.
            "download": {"isolated": False},
        }
        arch = platform.machine()
        cfg["arch"] = arch  # bundles are built for any arch; the profile's arch is reported as hardware class
        if self.secure:  # the [identity] table: key and certificate here, mTLS to the broker, renewal at the controller
            cfg["identity"] = {"directory": str(data_dir / "identity"), "controller_url": self.public_url}
        for table, values in self.agent.items():
            if isinstance(values, dict):
                cfg[table] = {**cfg.get(table, {}), **values}
            else:
                cfg[table] = values
        capture = cfg.get("capture")
        if isinstance(capture, dict) and capture.get("enabled") and not capture.get("url"):
            cfg["capture"] = {**capture, "url": self.public_url}  # captured samples go to the controller
        return cfg

    def start(self) -> None:
        """Start the processes of every group not started yet (groups may be added while the fleet runs)."""
        if self._root is None or set(self.groups) - self._enrolled:
            self.enrol()
        started = {w.group for w in self.workers}
        for g in self.groups.values():
            if g.name in started:
                continue
            port = self.broker[1]
            if g.relay:
                relay = Relay(self.broker[0], self.broker[1], name=f"mqtt-{g.name}")
                self.relays[g.name] = relay
                port = relay.port
            root = g.data_root or (self.workdir / "devices")
            chunks = _split(g.devices, max(1, g.processes))
            for i, chunk in enumerate(chunks):
                name = f"{g.name}-{i}"
                wdir = self.workdir / "workers"
                wdir.mkdir(parents=True, exist_ok=True)
                spec: dict[str, Any] = {
                    "name": name,
                    "stats_path": str(wdir / f"{name}.stats.json"),
                    "log_path": str(wdir / f"{name}.log"),
                    "log_level": self.log_level,
                    "seqs_dir": str(self.seqs_dir),
                    "start_spread_s": self.start_spread_s,
                    "clock_skew_s": g.clock_skew_s,
                    "pause_at": g.pause_at,
                    "devices": [
                        {"id": d.id, "profile": d.profile, "seed": d.seed, "app": d.app,
                         "config": self._device_config(d, root / d.id, port),
                         **({"enrol_token": self._tokens[d.id]} if d.id in self._tokens else {})}
                        for d in chunk
                    ],
                }  # fmt: skip
                spec_path = wdir / f"{name}.json"
                spec_path.write_text(json.dumps(spec))
                w = WorkerProc(name, g.name, spec_path, Path(spec["stats_path"]), Path(spec["log_path"]), [d.id for d in chunk])
                w.stats_path.unlink(missing_ok=True)
                w.start()
                self.workers.append(w)

    # -- while running -------------------------------------------------------------
    def group_workers(self, group: str) -> list[WorkerProc]:
        ws = [w for w in self.workers if w.group == group]
        if not ws:
            raise ValueError(f"no group {group!r}; groups: {sorted(self.groups)}")
        return ws

    def drift(self, kind: str, level: float, devices: list[str] | None = None, group: str | None = None) -> None:
        for w in self.group_workers(group) if group else self.workers:
            w.send({"op": "drift", "kind": kind, "level": level, "devices": devices})

    def kill(self, group: str) -> None:
        for w in self.group_workers(group):
            w.kill()

    def restart(self, group: str, *, pause_at: str | None = None) -> None:
        """Start the group's processes again (after a power cut), without the pause hook."""
        for w in self.group_workers(group):
            spec = json.loads(w.spec_path.read_text())
            spec["pause_at"] = pause_at
            w.spec_path.write_text(json.dumps(spec))
            w.start()

    def stats(self) -> dict[str, dict[str, Any]]:
        """Per device: what its worker last wrote (connected, windows, pending, OTA state, version, app counts)."""
        out: dict[str, dict[str, Any]] = {}
        for w in self.workers:
            s = w.stats()
            for dev, v in s.get("devices", {}).items():
                out[dev] = {**v, "worker": w.name, "alive": w.alive()}
        return out

    def wait(self, cond: Callable[[dict[str, dict[str, Any]]], bool], timeout: float, what: str) -> dict[str, dict[str, Any]]:
        """Until ``cond`` holds on the stats; a fleet process that died (not by a power cut) ends the wait at once."""
        deadline = time.monotonic() + timeout
        while True:
            s = self.stats()
            if cond(s):
                return s
            dead = self.dead_workers()
            if dead:
                raise RuntimeError(f"fleet process {dead[0].name} exited while waiting for {what}:\n{dead[0].output_tail()}")
            if time.monotonic() > deadline:
                raise TimeoutError(f"timed out after {timeout:.0f}s waiting for {what}")
            time.sleep(0.5)

    def window_seqs(self) -> dict[str, list[int]]:
        """Per device, the seqs of the telemetry windows it committed to its queue (all of them, across restarts)."""
        out: dict[str, list[int]] = {}
        for dev in self.device_ids:
            try:
                out[dev] = [int(x) for x in (self.seqs_dir / dev).read_text().split()]
            except (OSError, ValueError):
                out[dev] = []
        return out

    def dead_workers(self) -> list[WorkerProc]:
        return [w for w in self.workers if w.popen is not None and not w.alive() and w.popen.returncode not in (0, -9)]

    def stop(self) -> None:
        for w in self.workers:
            w.send({"op": "stop"})
        for w in self.workers:
            w.stop()
        for r in self.relays.values():
            r.close()

    def logs(self, tail: int = 2000) -> Iterator[tuple[str, str]]:
        for w in self.workers:
            for p in (w.log_path, w.log_path.with_suffix(".out")):
                try:
                    yield p.name, p.read_text(errors="replace")[-tail:]
                except OSError:
                    continue


def _split(items: list[DeviceSpec], n: int) -> list[list[DeviceSpec]]:
    n = min(n, len(items)) or 1
    return [items[i::n] for i in range(n)]

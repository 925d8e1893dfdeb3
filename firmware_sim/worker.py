"""One fleet process: many real agents sharing one MQTT loop and one model cache per hardware profile.

``python -m firmware_sim.worker SPEC.json`` (started by :mod:`firmware_sim.fleet`). Everything
process-wide is set here, never in the agent: the open-file limit, thread stack size,
logging, the clock skew of this group of devices. Commands arrive as JSON lines on stdin
(``drift``, ``stop``); the state of every device is written to ``stats_path`` once a second.
SIGKILL is a power cut of every device in the process; restarted, each agent resumes from
what it persisted.
"""

from __future__ import annotations

import json
import logging
import os
import random
import resource
import signal
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

from agent.config import AgentConfig, parse_config
from agent.daemon import Agent
from agent.mqttloop import MqttLoop
from agent.ota import testhook
from agent.runtime import ModelCache
from firmware_sim.device import AppSpec, SimDevice
from firmware_sim.profiles import Profile, SimSystem, adapter, profile
from firmware_sim.sensors import Camera, Drift
from shared.fsutil import atomic_write_bytes

log = logging.getLogger("firmware_sim.worker")
FDS_PER_AGENT = 12  # MQTT socket, two SQLite databases in WAL mode (3 each), a download, headroom
THREAD_STACK = 512 * 1024  # bytes; ~5 threads per agent, mostly waiting


def raise_fd_limit(want: int) -> int:
    """Raise the open-file limit towards ``want`` (up to the hard limit); the limit now."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    target = want if hard == resource.RLIM_INFINITY else min(want, hard)
    if target > soft:
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))
            return target
        except (ValueError, OSError) as exc:
            log.warning("cannot raise the open-file limit to %d: %s", target, exc)
    return soft


def skew_clock(seconds: float) -> None:
    """This process's wall clock runs ``seconds`` ahead (negative: behind), as a device's bad RTC would."""
    real = time.time
    time.time = lambda: real() + seconds


class Worker:
    def __init__(self, spec: dict[str, Any]) -> None:
        self.spec = spec
        self.stats_path = Path(spec["stats_path"])
        self.loop = MqttLoop()
        self.caches: dict[str, ModelCache] = {}
        self.devices: list[SimDevice] = []
        self._last_pending: dict[str, tuple[int, list[int]]] = {}
        self._stats_n = 0
        self._stop = threading.Event()
        from firmware_sim.modelgen import load_digits

        self.x, self.y = load_digits()

    def _size_of(self, sha256: str) -> int:
        for d in self.devices:
            p = d.agent.cfg.data_dir / "bundles" / f"{sha256}.tar"
            if p.exists():
                return p.stat().st_size
        return 0

    def _loaded_mb(self, holder: list[Agent], prof: Profile) -> float:
        if not holder:
            return 0.0
        return sum(prof.model_mb(self._size_of(m.sha256)) for m in holder[0].host.roles().values())

    def _cache(self, name: str) -> ModelCache:
        if name not in self.caches:
            sizes = _SizeLookup(self._size_of)
            self.caches[name] = ModelCache(adapter(profile(name), sizes))
        return self.caches[name]

    def build(self) -> None:
        pause = self.spec.get("pause_at")
        configs = [parse_config(d["config"], f"device {d['id']}") for d in self.spec["devices"]]
        tokens = [(cfg, d["enrol_token"]) for cfg, d in zip(configs, self.spec["devices"], strict=True) if "enrol_token" in d]
        with ThreadPoolExecutor(8) as pool:  # each device makes its key and enrols, as `edgefleet-agent --enrol` does
            list(pool.map(lambda ct: enrol_once(*ct), tokens))
        for d, cfg in zip(self.spec["devices"], configs, strict=True):
            prof = profile(d["profile"])
            checkpoint = testhook.from_env(cfg.data_dir, {testhook.ENV: pause}) if pause else None
            holder: list[Agent] = []
            system = SimSystem(prof, cfg.data_dir, lambda h=holder, p=prof: self._loaded_mb(h, p))
            agent = Agent(
                cfg, checkpoint=checkpoint, mqtt_loop=self.loop, models=self._cache(prof.name), system=system, local_socket=False
            )
            holder.append(agent)
            agent.telemetry.flush_s = float(self.spec.get("telemetry_flush_s", 1.0))  # 10 wakeups/s x hundreds of agents
            self._record_windows(agent, Path(self.spec["seqs_dir"]) / d["id"])
            app = AppSpec(**d.get("app", {}))
            cam = Camera(self.x, self.y, seed=int(d.get("seed", 0)))
            self.devices.append(SimDevice(d["id"], agent, cam, app, random.Random(int(d.get("seed", 0)))))  # noqa: S311

    @staticmethod
    def _record_windows(agent: Agent, path: Path) -> None:
        """Note the seq of every window the agent commits (the scenario's "no window lost" check reads them).

        The window is committed before its seq is noted: a power cut in between leaves a window
        the controller has and the record lacks, never the reverse.
        """
        t = agent.telemetry
        close = t.close_window

        def recorded() -> int:
            seq = close()
            try:
                with open(path, "a") as f:
                    f.write(f"{seq}\n")
            except OSError:
                log.warning("cannot note window %s of %s", seq, agent.cfg.device_id)
            return seq

        t.close_window = recorded  # type: ignore[method-assign]

    def start(self) -> None:
        self.loop.start()
        spread = float(self.spec.get("start_spread_s", 0.0))
        for i, d in enumerate(self.devices):
            d.agent.start()
            if spread and len(self.devices) > 1:
                time.sleep(spread / len(self.devices))
            if i % 50 == 0:
                self.write_stats()
        threading.Thread(target=self._commands, name="commands", daemon=True).start()

    def run(self) -> None:
        tick = float(self.spec.get("tick_s", 0.05))
        next_stats = 0.0
        while not self._stop.is_set():
            now = time.monotonic()
            for d in self.devices:
                d.tick(now)
            if now >= next_stats:
                self.write_stats()
                next_stats = now + 1.0
            self._stop.wait(tick)

    def stop(self) -> None:
        self._stop.set()
        with ThreadPoolExecutor(16) as pool:
            list(pool.map(lambda d: d.agent.stop(), self.devices))
        self.loop.stop()
        self.write_stats(stopped=True)

    def _commands(self) -> None:
        for line in sys.stdin:
            try:
                cmd = json.loads(line)
                op = cmd.get("op")
                if op == "stop":
                    self._stop.set()
                    return
                if op == "drift":
                    drift = Drift(str(cmd.get("kind", "none")), float(cmd.get("level", 0.0)))
                    want = cmd.get("devices")
                    for d in self.devices:
                        if want is None or d.device_id in want:
                            d.camera.drift = drift
                elif op == "app":
                    for d in self.devices:
                        d.app = AppSpec(**{**d.app.__dict__, **cmd.get("app", {})})
                else:
                    log.warning("unknown command %r", op)
            except Exception:  # a bad command must not stop the fleet
                log.exception("bad command %r", line[:200])
        self._stop.set()  # stdin closed: the orchestrator is gone

    def write_stats(self, stopped: bool = False) -> None:
        self._stats_n += 1
        big = len(self.devices) > 200
        fresh = stopped or not big or self._stats_n % 5 == 1  # queue counts (a query per device) every 5 s in big workers
        out: dict[str, Any] = {
            "pid": os.getpid(),
            "at": time.time(),
            "stopped": stopped,
            "loop_errors": self.loop.errors,
            "devices": {},
        }
        for d in self.devices:
            a = d.agent
            last = self._last_pending.get(d.device_id, (0, []))
            try:
                if not fresh:
                    pending, pending_seqs = last
                elif big:
                    pending, pending_seqs = a.telemetry.queue.pending(), []
                else:
                    pending_seqs = a.telemetry.queue.seqs()
                    pending = len(pending_seqs)
            except Exception:
                pending_seqs, pending = [], -1
            self._last_pending[d.device_id] = (pending, pending_seqs)
            prod = a.host.roles().get("production")
            out["devices"][d.device_id] = {
                "connected": a.link.connected,
                "connects": a.link.connects,
                "windows": a.telemetry.windows,
                "sent": a.telemetry.sender.sent,
                "pending": pending,
                "pending_seqs": pending_seqs,
                "ota": a.updater.ota_status().get("state", "?"),
                "version": prod.manifest.version if prod is not None else None,
                "sha256": prod.sha256 if prod is not None else None,
                "calls": d.stats.calls,
                "errors": d.stats.errors,
                "labels": d.stats.labels,
                "correct": d.stats.correct,
                "drift": [d.camera.drift.kind, d.camera.drift.level],
            }
        atomic_write_bytes(self.stats_path, json.dumps(out).encode())


def enrol_once(cfg: AgentConfig, token: str) -> None:
    """Enrol the device with its one-time token unless it holds a certificate already (a restarted process)."""
    from agent.identity import IdentityError, IdentityPaths, enrol

    assert cfg.identity is not None, f"{cfg.device_id}: an enrolment token without an [identity] table"
    paths = IdentityPaths(cfg.identity.directory)
    if paths.cert.exists():
        return
    try:
        enrol(cfg.identity.controller_url, token, cfg.device_id, paths, cafile=cfg.identity.controller_ca_file)
    except IdentityError as exc:
        raise RuntimeError(f"device {cfg.device_id} could not enrol: {exc}") from None


class _SizeLookup(dict[str, int]):
    """``dict.get`` for the profile adapter, answered from the bundles on the devices' disks."""

    def __init__(self, size_of: Any) -> None:
        super().__init__()
        self._size_of = size_of

    def get(self, key: str, default: Any = 0) -> Any:  # type: ignore[override]
        return self._size_of(key) or default


def main(argv: list[str] | None = None) -> int:
    args = sys.argv[1:] if argv is None else argv
    spec = json.loads(Path(args[0]).read_text())
    logging.basicConfig(
        filename=spec.get("log_path"),
        level=spec.get("log_level", "WARNING"),
        format="%(asctime)s %(levelname)s %(threadName)s %(name)s: %(message)s",
    )
    raise_fd_limit(len(spec["devices"]) * FDS_PER_AGENT + 256)
    threading.stack_size(THREAD_STACK)
    if spec.get("clock_skew_s"):
        skew_clock(float(spec["clock_skew_s"]))
    w = Worker(spec)
    signal.signal(signal.SIGTERM, lambda *_: w._stop.set())
    signal.signal(signal.SIGINT, lambda *_: w._stop.set())
    w.build()
    w.start()
    try:
        w.run()
    finally:
        w.stop()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

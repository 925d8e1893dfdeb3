"""Fleet: how many simulated devices one controller sustains on this machine, and an aarch64 install under QEMU.

Method: the real controller (SQLite) and Mosquitto; devices are the real agent, 250
per fleet process (one epoll MQTT loop and one model cache per process), each with its
own MQTT connection, digits v1 installed, a local app at 0.1 predictions/s, a
telemetry window every 10 s. The fleet grows in steps (``EDGEFLEET_BENCH_FLEET_STEPS``,
default 250,500,750,1000); each size is held ``EDGEFLEET_BENCH_FLEET_HOLD_S`` (60 s) and
is *sustained* when every device stays connected, the devices' unsent windows do not
grow, and every window committed before the end of the hold is stored by the
controller (its dedupe cursor, read from its database). The ramp stops at the first
size that is not sustained.

- ``max_devices``: the largest size sustained (goal >= 1000);
- ``controller_cpu_percent``, ``broker_cpu_percent``: CPU of those processes during the hold
  at that size (100 = one core); ``fleet_cpu_percent``: all fleet processes together;
- ``agent_rss_mb_per_device``: resident memory of the fleet processes / devices (interpreters,
  onnxruntime and the shared model included); ``agent_rss_mb_per_device_marginal``: the growth
  per device from the first step to the last;
- ``qemu_agent_install_s``: an aarch64 agent under qemu-user (Cortex-A72): from the assignment
  to the controller seeing it run the new version (committed); null when the image is not built
  (``make qemu-rootfs``);
- ``load1_before``: the machine's load average when the run started (other work shares it).
"""

from __future__ import annotations

import json
import os
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import psutil

STEPS = [int(s) for s in os.environ.get("EDGEFLEET_BENCH_FLEET_STEPS", "250,500,750,1000").split(",")]
HOLD_S = float(os.environ.get("EDGEFLEET_BENCH_FLEET_HOLD_S", "60"))
PER_PROCESS = int(os.environ.get("EDGEFLEET_BENCH_FLEET_PER_PROCESS", "250"))
WINDOW_S = 10


def _log(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


def _cpu(p: psutil.Process) -> float:
    try:
        t = p.cpu_times()
        return float(t.user + t.system)
    except psutil.Error:
        return 0.0


def _rss_mb(pids: list[int]) -> float:
    total = 0
    for pid in pids:
        try:
            total += psutil.Process(pid).memory_info().rss
        except psutil.Error:
            pass
    return total / 1e6


def _hold(sim: Any, n: int) -> dict[str, Any]:
    """Hold the fleet at its size for HOLD_S; what it cost and whether it kept up."""
    from firmware_sim.simrun import stored_seqs

    fleet = sim.fleet
    procs = {
        "controller": psutil.Process(sim.controller.popen.pid),
        "broker": psutil.Process(sim.broker.proc.pid),
    }
    workers = [psutil.Process(w.popen.pid) for w in fleet.workers if w.popen is not None]
    before = {k: _cpu(p) for k, p in procs.items()} | {"fleet": sum(_cpu(p) for p in workers)}
    s0 = fleet.stats()
    pending0 = sum(max(0, v.get("pending", 0)) for v in s0.values())
    t0 = time.monotonic()
    time.sleep(HOLD_S)
    took = time.monotonic() - t0
    after = {k: _cpu(p) for k, p in procs.items()} | {"fleet": sum(_cpu(p) for p in workers)}
    s1 = fleet.stats()
    seqs = fleet.window_seqs()
    pending1 = sum(max(0, v.get("pending", 0)) for v in s1.values())
    connected = sum(1 for v in s1.values() if v.get("connected"))
    rss = _rss_mb([p.pid for p in workers])
    deadline = time.monotonic() + 3 * WINDOW_S
    while True:  # windows committed by the end of the hold must be stored within a few windows
        has = stored_seqs(sim.controller.data_dir / "controller.db", fleet.device_ids)
        missing = sum(1 for d, qs in seqs.items() for q in qs if not has[d](q))
        if not missing or time.monotonic() > deadline:
            break
        time.sleep(2.0)
    windows = sum(len(q) for q in seqs.values())
    cpu = {k: round(100 * (after[k] - before[k]) / took, 1) for k in before}
    ok = connected == n and missing == 0 and pending1 <= max(pending0, n) + n // 10
    verdict = "sustained" if ok else "NOT sustained"
    _log(f"{n} devices: connected {connected}, windows {windows} committed, {missing} not stored, unsent {pending0}->{pending1}, "
         f"cpu {cpu}, fleet rss {rss:.0f} MB, load {os.getloadavg()[0]:.1f}: {verdict}")  # fmt: skip
    return {"ok": ok, "cpu": cpu, "rss_mb": rss, "missing": missing, "connected": connected, "windows": windows}


def _fleet(work: Path) -> dict[str, Any]:
    from firmware_sim.fleet import GroupSpec
    from firmware_sim.modelgen import make_onnx_bundle
    from firmware_sim.simrun import COHORT, SimRun, devices_for

    sim = SimRun(
        work,
        controller_env={"EDGEFLEET_TELEMETRY_WINDOW_S": str(WINDOW_S)},
        agent={"telemetry": {"window_s": WINDOW_S}, "download": {"retry_base_s": 5, "retry_max_s": 60}},
        start_spread_s=20.0,
    )
    profiles = {"rpi4": 0.5, "rpi5": 0.3, "jetson-orin-nano": 0.2}
    app = {"rate_hz": 0.1, "label_rate": 0.2, "label_delay_s": 5.0}
    best: dict[str, Any] | None = None
    first: tuple[int, float] | None = None
    result: dict[str, Any] = {"fleet_steps": STEPS, "fleet_hold_s": HOLD_S}
    try:
        sim.start_stack()
        v1 = sim.register(make_onnx_bundle(version=1, epochs=60, latency_budget_ms=1000.0))
        size = 0
        for i, target in enumerate(STEPS):
            group = f"g{i}"
            add = target - size
            devs = devices_for(group, add, profiles, app, seed=i)
            spec = GroupSpec(group, devs, processes=max(1, -(-add // PER_PROCESS)))
            if sim.fleet is None:
                sim.start_fleet([spec])
            else:
                sim.fleet.add(spec)
                sim.fleet.start()
                with sim.api() as api:
                    r = api.patch(f"/v1/cohorts/{COHORT}", json={"members": sim.fleet.device_ids})
                    r.raise_for_status()
            size = target
            t0 = time.monotonic()
            n = size
            try:
                up = lambda s, n=n: len(s) == n and all(v["connected"] for v in s.values())  # noqa: E731
                sim.fleet.wait(up, 600, f"{n} devices connected")
                _log(f"{n} devices connected in {time.monotonic() - t0:.0f} s")
                sim.assign(v1)
                sim.wait_versions(lambda v: v == v1, 600, f"{n} devices on v1")
                _log(f"{n} devices on v1 {time.monotonic() - t0:.0f} s after their start")
                time.sleep(WINDOW_S)  # the install's windows settle
                h = _hold(sim, n)
            except Exception as exc:  # a size the stack cannot take: the answer, not a crash
                _log(f"{n} devices: NOT sustained: {type(exc).__name__}: {exc}")
                result["first_not_sustained"] = {"devices": n, "error": f"{type(exc).__name__}: {exc}"[:300]}
                break
            if first is None:
                first = (n, h["rss_mb"])
            if not h["ok"]:
                result["first_not_sustained"] = {"devices": n, **{k: h[k] for k in ("cpu", "missing", "connected")}}
                break
            best = {"devices": n, **h}
        if best is not None:
            result.update(
                max_devices=best["devices"],
                controller_cpu_percent=best["cpu"]["controller"],
                broker_cpu_percent=best["cpu"]["broker"],
                fleet_cpu_percent=best["cpu"]["fleet"],
                agent_rss_mb_per_device=round(best["rss_mb"] / best["devices"], 2),
                fleet_processes=len(sim.fleet.workers) if sim.fleet else 0,
            )
            if first is not None and best["devices"] > first[0]:
                result["agent_rss_mb_per_device_marginal"] = round((best["rss_mb"] - first[1]) / (best["devices"] - first[0]), 2)
        else:
            result["max_devices"] = 0
    finally:
        sim.stop()
    return result


def _qemu(work: Path) -> float | None:
    """Assignment to committed (as the controller sees it) for one aarch64 agent under qemu-user."""
    from firmware_sim.modelgen import make_onnx_bundle
    from firmware_sim.procs import write_agent_config
    from firmware_sim.qemu.rootfs import RootfsError, ensure_rootfs
    from firmware_sim.qemu.runner import QemuPython
    from firmware_sim.stack import start_stack

    try:
        guest = QemuPython(ensure_rootfs())
    except (RootfsError, OSError) as exc:
        _log(f"qemu: no image ({exc}); qemu_agent_install_s is null")
        return None
    stack = start_stack(work / "qemu-stack")
    agent = None
    try:
        api = stack.controller.client()
        mv = (
            api.post("/v1/models", content=make_onnx_bundle(version=1, epochs=60, latency_budget_ms=5000.0))
            .raise_for_status()
            .json()
        )
        stack.controller.approve(mv["name"], mv["version"])
        dev = "arm-bench"
        api.post("/v1/devices", json={"id": dev, "arch": "aarch64", "hardware_class": "rpi4"}).raise_for_status()
        cfg = write_agent_config(
            work / "qemu-devices", dev, broker_host=stack.broker.host, broker_port=stack.broker.port,
            director_keys=[stack.director_key()], controller_url=stack.controller.url,
            extra="[health]\nlive_window = 2.0\n[telemetry]\nwindow_s = 10\n",
        )  # fmt: skip
        agent = guest.start_agent(work / "qemu-devices", dev, config_path=cfg)
        deadline = time.monotonic() + 600
        while not api.get(f"/v1/devices/{dev}").json()["online"]:
            if time.monotonic() > deadline or not agent.alive():
                raise RuntimeError(f"the aarch64 agent did not come online:\n{agent.log()[-2000:]}")
            time.sleep(0.5)
        t0 = time.monotonic()
        api.put(f"/v1/devices/{dev}/desired", json={"model": mv["name"], "version": mv["version"]}).raise_for_status()
        while ((api.get(f"/v1/devices/{dev}").json()["actual"].get("production") or {}).get("version")) != mv["version"]:
            if time.monotonic() > deadline or not agent.alive():
                raise RuntimeError(f"the aarch64 agent did not install v1:\n{agent.log()[-2000:]}")
            time.sleep(0.2)
        took = round(time.monotonic() - t0, 2)
        _log(f"qemu: aarch64 agent assignment -> committed in {took} s")
        return took
    finally:
        if agent is not None:
            agent.stop()
        stack.stop()


def run() -> dict[str, Any]:
    load = round(os.getloadavg()[0], 2)
    with tempfile.TemporaryDirectory(prefix="bench-fleet-") as d:
        work = Path(d)
        out = {"load1_before": load, "cpus": os.cpu_count()}
        if os.environ.get("EDGEFLEET_BENCH_FLEET_SKIP_QEMU") != "1":
            out["qemu_agent_install_s"] = _qemu(work)
        out.update(_fleet(work / "fleet"))
    _log(json.dumps(out))
    return out

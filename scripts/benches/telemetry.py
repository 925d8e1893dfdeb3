"""Telemetry cost and store-and-forward recovery.

- ``bytes_per_device_day``: one default 60 s window of a real int8 digits model
  at 100 inferences/s (compact payload as stored in the queue), plus MQTT framing
  (PUBLISH header, topic, packet id, the broker's PUBACK) and keepalive pings
  (30 s), times 1440 windows a day. ``bytes_per_device_day_tcpip`` adds 40 bytes
  of IPv4+TCP header for the four segments of each exchange (cellular bills those).
- ``cpu_overhead_percent``: extra CPU of the telemetry observer per inference,
  measured against the same inference loop without it (interleaved rounds,
  medians), times 100 inferences/s, plus closing one window per 60 s; in percent
  of one core. ``cpu_overhead_relative_percent`` is the same extra CPU relative
  to the inference itself.
- ``recovered_windows_ratio``: the outage scenario of the integration test
  (firmware_sim/outage.py) with 1 s windows.
"""

from __future__ import annotations

import statistics
import sys
import tempfile
import time
from pathlib import Path

WINDOW_S = 60.0  # default telemetry window
RATE = 100  # inferences per second
KEEPALIVE_S = 30  # agent default


def _log(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


def run() -> dict[str, object]:
    import hashlib

    from agent.config import parse_config
    from agent.host import ModelHost
    from agent.link import MqttLink
    from agent.runtime import load_model
    from agent.telemetry import Telemetry
    from firmware_sim.modelgen import load_digits, make_onnx_bundle
    from firmware_sim.outage import run_outage
    from shared import bundle as bundle_fmt
    from shared.topics import Kind, device_topic

    with tempfile.TemporaryDirectory() as tmp_s:
        tmp = Path(tmp_s)
        _log("building a real int8 digits bundle")
        raw = make_onnx_bundle(version=1)
        b = bundle_fmt.read(raw)
        (tmp / "model.onnx").write_bytes(b.model)
        model = load_model(b.manifest, tmp / "model.onnx", hashlib.sha256(raw).hexdigest())
        host = ModelHost()
        host.swap("production", model)
        device = "pi-000123"
        cfg = parse_config({"device_id": device, "data_dir": str(tmp / "agent"), "director_public_keys": ["0" * 64]})
        link = MqttLink(cfg, lambda: 0, lambda p: None, lambda: None)  # never started: windows stay queued
        seq = iter(range(1, 1_000_000))
        tel = Telemetry(cfg, host, link, lambda: next(seq), "bench")
        x = load_digits()[0]
        inputs = [x[i : i + 1].tolist() for i in range(500)]  # what the socket API hands over

        def loop(n: int) -> float:
            t0 = time.process_time()
            for i in range(n):
                host.predict(inputs[i % len(inputs)])
            return (time.process_time() - t0) / n

        _log("measuring inference CPU with and without telemetry")
        loop(300)
        base, with_tel = [], []
        for _ in range(7):
            host.observers[:] = []
            base.append(loop(1500))
            host.observers[:] = [tel.observe]
            with_tel.append(loop(1500))
        host.observers[:] = []
        per_inf_base, per_inf_tel = statistics.median(base), statistics.median(with_tel)

        _log("one default window at 100 inferences/s")
        tel.close_window()
        tel.queue.ack(tel.queue.seqs())
        host.observers[:] = [tel.observe]
        for i in range(int(RATE * WINDOW_S)):
            host.predict(inputs[i % len(inputs)])
        host.observers[:] = []
        t0 = time.process_time()
        s = tel.close_window()
        close_cpu = time.process_time() - t0
        payload = dict(tel.queue.oldest(10))[s]
        topic = len(device_topic(device, Kind.TELEMETRY).encode())
        remaining = 2 + topic + 2 + len(payload)
        publish = 1 + (1 if remaining < 128 else 2 if remaining < 16384 else 3) + remaining
        per_window = publish + 4  # + PUBACK
        pings = 86400 / KEEPALIVE_S * (2 + 2)  # PINGREQ + PINGRESP
        windows_per_day = 86400 / WINDOW_S
        bytes_day = windows_per_day * per_window + pings
        tcpip_day = bytes_day + windows_per_day * 4 * 40 + 86400 / KEEPALIVE_S * 4 * 40
        tel.queue.close()

    overhead_s = per_inf_tel - per_inf_base + close_cpu / (RATE * WINDOW_S)
    cpu_pct = overhead_s * RATE * 100
    _log(
        f"inference {per_inf_base * 1e6:.1f} us, with telemetry {per_inf_tel * 1e6:.1f} us; window close {close_cpu * 1e3:.2f} ms"
    )
    _log(f"payload {len(payload)} bytes per window")

    _log("outage scenario: broker down, agent SIGKILLed and restarted, broker back")
    with tempfile.TemporaryDirectory() as tmp_s:
        outage = run_outage(Path(tmp_s), window_s=1.0, down_windows=5)
    return {
        "telemetry_window_payload_bytes": len(payload),
        "bytes_per_device_day": round(bytes_day),
        "bytes_per_device_day_tcpip": round(tcpip_day),
        "cpu_overhead_percent": round(cpu_pct, 3),
        "cpu_overhead_relative_percent": round(100 * overhead_s / per_inf_base, 1),
        "recovered_windows_ratio": round(outage.recovered_ratio, 4),
        "recovered_windows": sum(len(set(ix)) for ix in outage.by_boot.values()),
    }

"""Agent benchmark: inference overhead, socket latency, hot swap under load, memory, idle CPU.

- ``overhead_ratio``: p50 of ``ModelHost.predict`` (the agent's in-process path:
  input checks, quantization, runtime, prediction id, feedback record) ÷ p50 of
  the bare ``onnxruntime`` session call, same model and input, same run.
  ``overhead_us`` is the same difference in microseconds: the digits model
  runs in ~8 µs, so a fixed few µs of Python weigh more than on real models.
- ``socket_p50_us``: p50 of a JSON-lines predict over the Unix socket of a real agent process.
- ``socket_binary_p50_us``: the same with binary tensor frames (``AgentClient.predict_array``).
- ``socket_ratio``: ``socket_binary_p50_us`` ÷ p50 of a bare Python Unix-socket echo server
  (scripts/benches/_socket_echo.py, its own process) with the same framing, request and answer
  size; rounds of the three interleaved in the same run so machine noise hits them alike.
- ``swap_failed_requests`` / ``swap_pause_p99_ms``: 3 clients predict without
  pause over the socket while the agent swaps models 4 times through the full
  verified path; failures counted, p99 of the request latency during the swaps.
- ``rss_mb_onnx`` / ``rss_mb_litert``: VmRSS of a real agent process (MQTT
  connected, serving an int8 model of that runtime) after 200 predictions.
- ``idle_cpu_percent``: CPU time of the idle connected ONNX agent over 10 s.
"""

from __future__ import annotations

import os
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

import numpy as np

ROOT = Path(__file__).resolve().parents[2]


def _log(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


def _p(values: list[float], q: float) -> float:
    s = sorted(values)
    return s[min(len(s) - 1, int(q * len(s)))]


def _time_calls(fn: Any, n: int) -> list[float]:
    out = []
    for _ in range(n):
        t0 = time.perf_counter()
        fn()
        out.append(time.perf_counter() - t0)
    return out


def _overhead(up: Any, x: np.ndarray) -> tuple[float, float]:
    model = up.host.get()
    sess = model.runtime._session
    feed = {"input": x[:1]}
    names = ["probs"]
    inputs = x[:1]
    for _ in range(200):
        sess.run(names, feed)
        up.host.predict(inputs)
    bare, agent = [], []
    for _ in range(5):  # interleaved rounds so machine noise hits both alike
        bare += _time_calls(lambda: sess.run(names, feed), 2000)
        agent += _time_calls(lambda: up.host.predict(inputs), 2000)
    a, b = statistics.median(agent), statistics.median(bare)
    return a / b, (a - b) * 1e6


def _rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024.0
    raise RuntimeError("no VmRSS")


def _cpu_s(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def _socket_latency(agent_sock: Path, echo_sock: Path, x: np.ndarray) -> dict[str, float]:
    from agent.localapi.client import AgentClient

    echo = subprocess.Popen(
        [sys.executable, str(ROOT / "scripts" / "benches" / "_socket_echo.py"), str(echo_sock), "10"],
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert echo.stdout is not None and echo.stdout.readline().strip() == "ready"
        sample, arr = x[:1].tolist(), np.ascontiguousarray(x[:1], dtype=np.float32)
        with AgentClient(agent_sock) as c, AgentClient(echo_sock) as e:
            assert c.predict_array(arr)["outputs"]["probs"].shape == e.predict_array(arr)["outputs"]["probs"].shape
            for _ in range(200):
                c.predict(sample)
                c.predict_array(arr)
                e.predict_array(arr)
            js, binary, bare = [], [], []
            for _ in range(5):  # interleaved rounds
                js += _time_calls(lambda: c.predict(sample), 400)
                binary += _time_calls(lambda: c.predict_array(arr), 400)
                bare += _time_calls(lambda: e.predict_array(arr), 400)
    finally:
        echo.kill()
        echo.wait()
    b, e50 = statistics.median(binary), statistics.median(bare)
    return {
        "socket_p50_us": round(statistics.median(js) * 1e6, 1),
        "socket_binary_p50_us": round(b * 1e6, 1),
        "socket_echo_p50_us": round(e50 * 1e6, 1),
        "socket_ratio": round(b / e50, 3),
    }


def run() -> dict[str, Any]:
    sys.path.insert(0, str(ROOT))
    from agent.config import HealthConfig
    from agent.localapi.client import AgentClient
    from agent.localapi.server import LocalApi, SocketServer
    from firmware_sim.modelgen import load_digits, make_onnx_bundle, make_tflite_bundle
    from firmware_sim.mosquitto import MosquittoProcess
    from firmware_sim.procs import start_agent
    from shared.topics import Kind, device_topic
    from tests.mqttwatch import Watcher
    from tests.otalab import Lab

    x, _ = load_digits()
    result: dict[str, Any] = {}
    with tempfile.TemporaryDirectory() as tmp_s:
        tmp = Path(tmp_s)
        _log("making int8 bundles")
        onnx = [make_onnx_bundle(version=v, epochs=60 + v) for v in (1, 2, 3)]
        tflite = make_tflite_bundle((ROOT / "tests" / "fixtures" / "digits_int8.tflite").read_bytes())
        lab = Lab(tmp / "lab")
        try:
            assigns = [lab.publish(b) for b in onnx]
            a_lite = lab.publish(tflite)

            # -- in-process: overhead and hot swap under load ------------------------------
            up = lab.updater(tmp / "inproc", health=HealthConfig(live_inferences=50, live_window=5.0, latency_runs=5))
            up.apply(lab.desired("lab-dev", assigns[0]))
            _log("overhead: agent path vs bare onnxruntime")
            ratio, added_us = _overhead(up, x)
            result["overhead_ratio"] = round(ratio, 3)
            result["overhead_us"] = round(added_us, 2)  # absolute cost added per predict

            _log("hot swap under continuous load")
            server = SocketServer(tmp / "swap.sock", LocalApi(up.host))
            server.start()
            stop, swapping = threading.Event(), threading.Event()
            failed, during = [0], []

            def hammer(i: int) -> None:
                with AgentClient(tmp / "swap.sock") as c:
                    while not stop.is_set():
                        t0 = time.perf_counter()
                        r = c.predict(x[i : i + 1].tolist())
                        dt = time.perf_counter() - t0
                        if not r.get("ok"):
                            failed[0] += 1
                        if swapping.is_set():
                            during.append(dt)

            threads = [threading.Thread(target=hammer, args=(i,)) for i in range(3)]
            for t in threads:
                t.start()
            time.sleep(0.5)
            swapping.set()
            for a in (assigns[1], assigns[2], assigns[0], assigns[1]):
                up.apply(lab.desired("lab-dev", a))
            swapping.clear()
            stop.set()
            for t in threads:
                t.join(10)
            server.stop()
            result["swap_failed_requests"] = failed[0]
            result["swap_pause_p99_ms"] = round(_p(during, 0.99) * 1000, 3)

            # -- real agent processes: socket latency, RSS, idle CPU ------------------------
            broker = MosquittoProcess(tmp / "mosquitto")
            broker.start()
            try:
                for runtime, a in (("onnx", assigns[0]), ("litert", a_lite)):
                    device = f"bench-{runtime}"
                    _log(f"real agent process serving {runtime}")
                    agent = start_agent(
                        tmp,
                        device,
                        broker_host=broker.host,
                        broker_port=broker.port,
                        director_keys=[lab.director_key_hex],
                        image_repo=(f"{lab.server.url}/metadata/", lab.repo.root_bytes(1)),
                        extra="[health]\nlive_window = 0.2\nlatency_runs = 5\n",
                    )
                    w = Watcher(broker.host, broker.port, device_topic(device, Kind.STATUS))
                    try:
                        w.publish(device_topic(device, Kind.DESIRED), lab.desired(device, a), retain=True)
                        w.wait_for(
                            lambda m: m.get("state") == "online" and m.get("ota", {}).get("state") == "COMMITTED", "/status", 60
                        )
                        if runtime == "onnx":
                            result.update(_socket_latency(agent.socket_path, tmp / "echo.sock", x))
                        else:
                            with AgentClient(agent.socket_path) as c:
                                sample = x[:1].tolist()
                                for _ in range(200):
                                    c.predict(sample)
                        result[f"rss_mb_{runtime}"] = round(_rss_mb(agent.popen.pid), 1)
                        if runtime == "onnx":
                            _log("idle CPU over 10 s")
                            c0, t0 = _cpu_s(agent.popen.pid), time.monotonic()
                            time.sleep(10)
                            result["idle_cpu_percent"] = round(100 * (_cpu_s(agent.popen.pid) - c0) / (time.monotonic() - t0), 2)
                    finally:
                        w.close()
                        agent.stop()
            finally:
                broker.stop()
        finally:
            lab.close()
    return result

"""Agent benchmark: inference overhead, socket latency, hot swap under load, memory, idle CPU.

- ``overhead_ratio``: p50 of ``ModelHost.predict_arrays`` as the daemon runs it per request
  (telemetry recording, its thread binning in the background; inputs as the socket delivers
  them: read-only views of the request bytes) ÷ p50 of the public ``InferenceSession.run``
  on the same input, interleaved rounds, same run. ``overhead_us`` is the same difference
  in microseconds: the digits model runs in ~6 µs, so a fixed few µs of Python weigh more
  than on real models.
- ``socket_p50_us``: p50 of a JSON-lines predict over the Unix socket of a real agent process.
- ``socket_binary_p50_us``: the same with binary tensor frames (``AgentClient.predict_array``).
- ``socket_ratio``: ``socket_binary_p50_us`` ÷ p50 of a bare Python Unix-socket echo server
  (scripts/benches/_socket_echo.py, its own process) with the same framing, request and answer
  size; rounds of the four interleaved in the same run so machine noise hits them alike.
- ``socket_echo_model_p50_us`` / ``socket_ratio_vs_model``: the same echo server also running the
  served ONNX model on each request (the session core, as the agent calls it), and the agent's
  p50 against it: what the agent adds besides the socket and the model.
- ``swap_failed_requests`` / ``swap_pause_p99_ms``: 3 clients predict without
  pause over the socket while the agent swaps models 4 times through the full
  verified path; error answers and client threads that raised are counted, p99 of
  the request latency during the swaps.
- Real agent processes connect to a private Mosquitto over mTLS (the generated broker
  config, a device certificate from a fresh device CA), as in production.
- ``embedded_overhead_ratio``: p50 of ``EmbeddedModel.predict`` (agent/embedded.py: the
  agent's committed model in this process, its hand-off thread running) ÷ p50 of the public
  ``InferenceSession.run`` of the same model, on read-only arrays (kept by reference);
  ``embedded_overhead_ratio_copy`` the same with writeable arrays, which telemetry copies.
- ``rss_growth_mb_per_hour``: a soak of 100 binary predicts/s over the socket of the real
  ONNX agent for ``soak_s`` seconds (``EDGEFLEET_BENCH_SOAK_S``, default 250); VmRSS sampled
  every 2 s after 70 s of warm-up (recent predictions filled, the first window closed); the
  Theil-Sen slope (median of pairwise slopes: RSS moves in allocator steps) extrapolated
  linearly to an hour: a short soak, not an hour-long one.
- ``rss_mb_onnx``: VmRSS of that agent at the end of the soak (MQTT over mTLS connected,
  serving, telemetry on); ``rss_mb_litert``: the LiteRT agent after 10 s at 100 predicts/s.
  ``rss_anon_mb_*``: the anonymous part of each (what the process allocated), without the pages
  of shared library files the kernel has mapped, which depend on the kernel and page cache.
- ``idle_cpu_percent``: CPU time of the idle connected ONNX agent over 10 s.
"""

from __future__ import annotations

import functools
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


def _overhead(host: Any, tel: Any, x: np.ndarray) -> tuple[float, float]:
    """The agent's per-request path as the daemon runs it: telemetry recording (its thread
    binning in the background), inputs as the socket delivers them (read-only views of the
    request bytes), ``ModelHost.predict_arrays``; against the public runtime call on the same view."""
    from agent.localapi import framing

    model = host.get()
    sess = model.runtime._session
    views = []
    for i in range(256):
        frame = framing.encode({"op": "predict"}, [("", np.ascontiguousarray(x[i : i + 1], np.float32))])
        _, arrays = framing.read_frame(_reader(frame), 1 << 20)
        views.append(arrays[""])
    names = ["probs"]
    feeds = [{"input": v} for v in views]
    tel.start()
    try:
        for i in range(1000):
            sess.run(names, feeds[i % 256])
            host.predict_arrays(views[i % 256])
        bare, agent = [], []
        for _ in range(7):  # interleaved rounds so machine noise hits both alike
            bare += _time_each(functools.partial(sess.run, names), feeds, 2048)
            agent += _time_each(host.predict_arrays, views, 2048)
    finally:
        tel.stop()
    a, b = statistics.median(agent), statistics.median(bare)
    return a / b, (a - b) * 1e6


def _reader(data: bytes) -> Any:
    import io

    return io.BytesIO(data).read


def _time_each(fn: Any, args: list[Any], n: int) -> list[float]:
    out = []
    clock = time.perf_counter
    for i in range(n):
        a = args[i % len(args)]
        t0 = clock()
        fn(a)
        out.append(clock() - t0)
    return out


SOAK_WARMUP_S = 70.0  # seconds before RSS samples count: recent predictions (4,096) filled, the first 60 s window closed


class _SecureBroker:
    """A private Mosquitto with the generated mTLS config; identities from a fresh device CA."""

    def __init__(self, root: Path) -> None:
        import getpass

        from controller.identity import pki
        from controller.identity.broker_auth import provision, write_identity
        from controller.identity.broker_config import MosquittoConfig
        from firmware_sim.mosquitto import MosquittoProcess, free_port

        self.ca = pki.DeviceCA.generate()
        self.sec = provision(self.ca, root / "broker")
        config = MosquittoConfig(
            port=free_port(), security=self.sec, pid_file=root / "run" / "mosquitto.pid", run_as=getpass.getuser()
        )
        self.proc = MosquittoProcess(root / "run", config)
        ident = write_identity(self.ca, pki.CONTROLLER_IDENTITY, root / "controller")
        self.controller = (ident.ca, ident.cert, ident.key)
        self.proc.start()

    def identity_extra(self, device_id: str, directory: Path) -> str:
        """A device certificate in an ``[identity]`` directory: the agent connects with it over mTLS."""
        from controller.identity import pki
        from shared.csr import make_csr

        directory.mkdir(parents=True, exist_ok=True)
        key = pki.new_key()
        (directory / "ca.pem").write_bytes(self.sec.cafile.read_bytes())
        (directory / "device.pem").write_bytes(self.ca.issue_device(device_id, make_csr(key, device_id)).pem)
        (directory / "device.key").write_bytes(pki.key_pem(key))
        (directory / "device.key").chmod(0o600)
        return f'[identity]\ndirectory = "{directory}"\n'

    def stop(self) -> None:
        self.proc.stop()


def _embedded_overhead(data_dir: Path, x: np.ndarray) -> tuple[float, float]:
    """p50 of ``EmbeddedModel.predict`` (the app's in-process path, its telemetry hand-off thread
    running) ÷ p50 of the public ``InferenceSession.run`` of the same loaded model, interleaved.

    Two figures: arrays the application hands over read-only (kept by reference, the documented
    fast case), and writeable arrays, which telemetry copies since the application may reuse them."""
    from agent.embedded import EmbeddedModel

    app = EmbeddedModel(data_dir, window_s=1.0)
    try:
        sess = app.model.runtime._session  # type: ignore[attr-defined]
        writeable = [np.ascontiguousarray(x[i : i + 1], np.float32) for i in range(256)]
        frozen = [a.copy() for a in writeable]
        for a in frozen:
            a.flags.writeable = False
        feeds = [{"input": v} for v in frozen]
        run = functools.partial(sess.run, ["probs"])
        for i in range(1000):
            run(feeds[i % 256])
            app.predict(frozen[i % 256])
            app.predict(writeable[i % 256])
        bare, ro, rw = [], [], []
        for _ in range(7):
            bare += _time_each(run, feeds, 2048)
            ro += _time_each(app.predict, frozen, 2048)
            rw += _time_each(app.predict, writeable, 2048)
    finally:
        app.close()
    b = statistics.median(bare)
    return statistics.median(ro) / b, statistics.median(rw) / b


def _soak(agent: Any, x: np.ndarray, seconds: float) -> tuple[float, float]:
    """100 binary predicts a second over the socket for ``seconds``; RSS sampled every 2 s after
    ``SOAK_WARMUP_S``. Returns the RSS slope in MB per hour (Theil-Sen: the median of the
    pairwise slopes, so a single allocator step does not read as a trend; a short soak,
    extrapolated linearly) and the last RSS in MB."""
    from agent.localapi.client import AgentClient

    arr = [np.ascontiguousarray(x[i : i + 1], np.float32) for i in range(100)]
    t0 = time.monotonic()
    samples: list[tuple[float, float]] = []
    next_call, next_sample, i = t0, t0 + SOAK_WARMUP_S, 0
    with AgentClient(agent.socket_path) as c:
        while (now := time.monotonic()) < t0 + seconds:
            if now >= next_sample:
                samples.append((now - t0, _rss_mb(agent.popen.pid)))
                next_sample += 2.0
            c.predict_array(arr[i % 100])
            i += 1
            next_call += 0.01
            time.sleep(max(0.0, next_call - time.monotonic()))
    if len(samples) < 3:
        return 0.0, _rss_mb(agent.popen.pid)
    t, r = np.array(samples).T
    i, j = np.triu_indices(len(t), k=1)
    slope = float(np.median((r[j] - r[i]) / (t[j] - t[i])))  # Theil-Sen, MB/s: one 1 MiB arena step is not a trend
    return slope * 3600.0, float(r[-1])


def _telemetry(data_dir: Path, host: Any) -> Any:
    """The daemon's telemetry service on ``host``, its link never connected (windows stay queued)."""
    from agent.config import parse_config
    from agent.link import MqttLink
    from agent.telemetry import Telemetry

    cfg = parse_config({"device_id": "bench", "data_dir": str(data_dir), "director_public_keys": ["0" * 64]})
    link = MqttLink(cfg, lambda: 0, lambda p: None, lambda: None)
    seq = iter(range(1, 1_000_000_000))
    return Telemetry(cfg, host, link, lambda: next(seq), "bench")


def _rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024.0
    raise RuntimeError("no VmRSS")


def _anon_mb(pid: int) -> float:
    """The anonymous part of the resident size: what the process allocated itself (heap, stacks,
    relocated library data), without the pages of shared library files the kernel has mapped."""
    for line in Path(f"/proc/{pid}/smaps_rollup").read_text().splitlines():
        if line.startswith("Anonymous:"):
            return int(line.split()[1]) / 1024.0
    raise RuntimeError("no Anonymous in smaps_rollup")


def _cpu_s(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def _echo(path: Path, *model: Path) -> subprocess.Popen[str]:
    p = subprocess.Popen(
        [sys.executable, str(ROOT / "scripts" / "benches" / "_socket_echo.py"), str(path), "10", *map(str, model)],
        stdout=subprocess.PIPE,
        text=True,
    )
    assert p.stdout is not None and p.stdout.readline().strip() == "ready"
    return p


def _socket_latency(agent_sock: Path, echo_sock: Path, model: Path, x: np.ndarray) -> dict[str, float]:
    from agent.localapi.client import AgentClient

    model_sock = echo_sock.with_name("echo-model.sock")
    echoes = [_echo(echo_sock), _echo(model_sock, model)]
    try:
        sample, arr = x[:1].tolist(), np.ascontiguousarray(x[:1], dtype=np.float32)
        with AgentClient(agent_sock) as c, AgentClient(echo_sock) as e, AgentClient(model_sock) as m:
            assert c.predict_array(arr)["outputs"]["probs"].shape == e.predict_array(arr)["outputs"]["probs"].shape
            assert np.allclose(c.predict_array(arr)["outputs"]["probs"], m.predict_array(arr)["outputs"]["probs"])
            for _ in range(200):
                c.predict(sample)
                c.predict_array(arr)
                e.predict_array(arr)
                m.predict_array(arr)
            js, binary, bare, with_model = [], [], [], []
            for _ in range(5):  # interleaved rounds
                js += _time_calls(lambda: c.predict(sample), 400)
                binary += _time_calls(lambda: c.predict_array(arr), 400)
                bare += _time_calls(lambda: e.predict_array(arr), 400)
                with_model += _time_calls(lambda: m.predict_array(arr), 400)
    finally:
        for p in echoes:
            p.kill()
            p.wait()
    b, e50, m50 = statistics.median(binary), statistics.median(bare), statistics.median(with_model)
    return {
        "socket_p50_us": round(statistics.median(js) * 1e6, 1),
        "socket_binary_p50_us": round(b * 1e6, 1),
        "socket_echo_p50_us": round(e50 * 1e6, 1),
        "socket_ratio": round(b / e50, 3),
        "socket_echo_model_p50_us": round(m50 * 1e6, 1),
        "socket_ratio_vs_model": round(b / m50, 3),
    }


def run() -> dict[str, Any]:
    sys.path.insert(0, str(ROOT))
    from agent.config import HealthConfig
    from agent.localapi.client import AgentClient
    from agent.localapi.server import LocalApi, SocketServer
    from firmware_sim.modelgen import load_digits, make_onnx_bundle, make_tflite_bundle
    from firmware_sim.procs import start_agent
    from shared import bundle as bundle_fmt
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
            _log("overhead: agent path (telemetry on, socket-delivered input) vs the public onnxruntime call")
            ratio, added_us = _overhead(up.host, _telemetry(tmp / "tel", up.host), x)
            result["overhead_ratio"] = round(ratio, 3)
            result["overhead_us"] = round(added_us, 2)  # absolute cost added per predict

            _log("hot swap under continuous load")
            server = SocketServer(tmp / "swap.sock", LocalApi(up.host))
            server.start()
            stop, swapping = threading.Event(), threading.Event()
            failed, during = [0], []

            raised: list[BaseException] = []

            def hammer(i: int) -> None:
                try:
                    with AgentClient(tmp / "swap.sock") as c:
                        while not stop.is_set():
                            t0 = time.perf_counter()
                            r = c.predict(x[i : i + 1].tolist())
                            dt = time.perf_counter() - t0
                            if not r.get("ok"):
                                failed[0] += 1
                            if swapping.is_set():
                                during.append(dt)
                except BaseException as exc:  # a client thread that raised is a failed request, never silent
                    raised.append(exc)

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
            result["swap_failed_requests"] = failed[0] + len(raised)  # error answers + client threads that raised
            result["swap_pause_p99_ms"] = round(_p(during, 0.99) * 1000, 3)

            # -- real agent processes over mTLS: socket latency, in-process mode, RSS, soak, idle CPU --
            broker = _SecureBroker(tmp / "tls")
            try:
                for runtime, a in (("onnx", assigns[0]), ("litert", a_lite)):
                    device = f"bench-{runtime}"
                    _log(f"real agent process serving {runtime}, MQTT over mTLS")
                    agent = start_agent(
                        tmp,
                        device,
                        broker_host=broker.proc.host,
                        broker_port=broker.proc.port,
                        director_keys=[lab.director_key_hex],
                        image_repo=(f"{lab.server.url}/metadata/", lab.repo.root_bytes(1)),
                        extra=broker.identity_extra(device, tmp / f"{device}-identity")
                        + "[health]\nlive_window = 0.2\nlatency_runs = 5\n",
                    )
                    w = Watcher(broker.proc.host, broker.proc.port, device_topic(device, Kind.STATUS), tls=broker.controller)
                    try:
                        w.publish(device_topic(device, Kind.DESIRED), lab.desired(device, a), retain=True)
                        w.wait_for(
                            lambda m: m.get("state") == "online" and m.get("ota", {}).get("state") == "COMMITTED", "/status", 60
                        )
                        if runtime == "onnx":
                            model_file = tmp / "model.onnx"
                            model_file.write_bytes(bundle_fmt.read(onnx[0]).model)
                            result.update(_socket_latency(agent.socket_path, tmp / "echo.sock", model_file, x))
                            _log("in-process mode: EmbeddedModel.predict vs the public runtime call")
                            ro, rw = _embedded_overhead(agent.data_dir, x)
                            result["embedded_overhead_ratio"] = round(ro, 3)
                            result["embedded_overhead_ratio_copy"] = round(rw, 3)
                            soak_s = float(os.environ.get("EDGEFLEET_BENCH_SOAK_S", "250"))
                            _log(f"soak: 100 inferences/s for {soak_s:.0f} s, RSS sampled after {SOAK_WARMUP_S} s of warm-up")
                            growth, rss_end = _soak(agent, x, soak_s)
                            result["rss_growth_mb_per_hour"] = round(growth, 2)
                            result["soak_s"] = soak_s
                            result["rss_mb_onnx"] = round(rss_end, 1)
                            result["rss_anon_mb_onnx"] = round(_anon_mb(agent.popen.pid), 1)
                        else:
                            _soak(agent, x, 10.0)
                            result[f"rss_mb_{runtime}"] = round(_rss_mb(agent.popen.pid), 1)
                            result[f"rss_anon_mb_{runtime}"] = round(_anon_mb(agent.popen.pid), 1)
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

"""In-process mode (agent/embedded.py): the application runs the agent's committed model itself.

A real agent process, a real broker, a real TUF repository: the application loads what the
agent committed, follows a hot swap the moment the agent commits the next version (no
restart, no call lost), and its calls reach the fleet's telemetry through the agent, with
late labels, as if the agent had served them.
"""

from __future__ import annotations

import threading
import time

import numpy as np
import pytest

from agent.embedded import EmbeddedModel, NoCommittedModel
from firmware_sim.modelgen import load_digits
from firmware_sim.telemetry_rx import TelemetryReceiver
from shared.topics import Kind, device_topic
from tests.mqttwatch import Watcher
from tests.otalab import Lab

pytestmark = [pytest.mark.integration]


def _wait(cond, timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not cond():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.05)


def test_the_app_serves_the_committed_model_follows_a_swap_and_reports_through_the_agent(mosquitto, tmp_path, make_bundle):
    lab = Lab(tmp_path / "lab")
    device = "embedded-1"
    watch = Watcher(mosquitto.host, mosquitto.port, device_topic(device, Kind.STATUS), device_topic(device, Kind.EVENTS))
    rx = TelemetryReceiver(mosquitto.host, mosquitto.port, device)
    agent = lab.start_agent(
        tmp_path, device, mosquitto, "[telemetry]\nwindow_s = 1\nwindows_per_publish = 1\n"
    )  # no batching: the test waits 10 s for windows
    topic = device_topic(device, Kind.DESIRED)
    x = np.ascontiguousarray(load_digits()[0][:50], dtype=np.float32)
    try:
        with pytest.raises(NoCommittedModel):
            EmbeddedModel(agent.data_dir)  # nothing committed yet
        watch.publish(topic, lab.desired(device, lab.publish(make_bundle(1))), retain=True)
        watch.wait_for(lambda m: m.get("kind") == "ota.committed", "/events")

        app = EmbeddedModel(agent.data_dir, window_s=0.3, poll_s=5.0)  # a 5 s poll: only inotify can be this quick
        try:
            r = app.predict(x[:1])
            assert r.model.manifest.version == 1 and r.outputs["probs"].shape == (1, 10)
            assert app.feedback(r.prediction_id, int(r.outputs["probs"].argmax())) == {"ok": True, "correct": True}

            versions: list[int] = []
            errors: list[BaseException] = []
            stop = threading.Event()

            def hammer() -> None:  # calls keep flowing through the swap
                i = 0
                while not stop.is_set():
                    try:
                        versions.append(app.predict(x[i % 50 : i % 50 + 1]).model.manifest.version)
                    except BaseException as exc:
                        errors.append(exc)
                    i += 1
                    time.sleep(0.001)

            t = threading.Thread(target=hammer)
            t.start()
            watch.publish(topic, lab.desired(device, lab.publish(make_bundle(2))), retain=True)
            watch.wait_for(lambda m: m.get("kind") == "ota.committed" and m.get("detail", {}).get("version") == 2, "/events")
            _wait(lambda: app.model.manifest.version == 2, 3.0, "the app to follow the commit")
            _wait(lambda: versions and versions[-1] == 2, 3.0, "calls on v2")
            stop.set()
            t.join()
            assert not errors and app.swaps == 1
            assert versions[0] == 1 and set(versions) == {1, 2} and versions == sorted(versions)
            served = 1 + len(versions)
        finally:
            app.close()

        def counted() -> tuple[int, int, int]:
            calls = labels = late = 0
            for w in rx.snapshot().values():
                s = w.roles.get("production")
                if s is not None:
                    calls += s["count"]
                    labels += s["labels"]["count"]
                late += len(w.labels)
            return calls, labels, late

        _wait(lambda: counted()[0] >= served and counted()[1] + counted()[2] >= 1, 10.0, "the app's calls in the agent's windows")
        assert counted()[0] == served  # every call of the app, once (the agent served none itself)
    finally:
        rx.close()
        watch.close()
        agent.stop()
        lab.close()

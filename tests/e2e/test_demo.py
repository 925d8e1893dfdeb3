"""`make demo` end to end with a few devices: the whole loop, the retraining done by the controller's own pipeline,
then the summary; the demo keeps running (its controller answers the API) until Ctrl-C."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import httpx
import pytest

from firmware_sim.procs import REPO

pytestmark = [pytest.mark.e2e, pytest.mark.slow]
DEVICES = 8
READY = "the fleet keeps running; Ctrl-C ends the demo"


class Output:
    """The demo's output, read as it comes."""

    def __init__(self, proc: subprocess.Popen[str]) -> None:
        self.lines: list[str] = []
        assert proc.stdout is not None
        self._stdout = proc.stdout
        self._thread = threading.Thread(target=self._read, daemon=True)
        self._thread.start()

    def _read(self) -> None:
        for line in self._stdout:
            self.lines.append(line)

    def close(self) -> None:
        """Once the process has ended: the rest of its output, and the pipe closed."""
        self._thread.join(timeout=10)
        self._stdout.close()

    @property
    def text(self) -> str:
        return "".join(self.lines)


@pytest.mark.timeout(900)
def test_demo_closes_the_loop_through_the_controllers_pipeline_and_keeps_serving_until_ctrl_c(tmp_path: Path) -> None:
    proc = subprocess.Popen(
        [sys.executable, "scripts/demo.py", "--devices", str(DEVICES), "--no-live", "--workdir", str(tmp_path / "demo")],
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, cwd=REPO,
        env={**os.environ, "COLUMNS": "200"},  # rich wraps at the console width: one summary item a line
    )  # fmt: skip
    out = Output(proc)
    try:
        deadline = time.monotonic() + 840
        while READY not in out.text:
            assert proc.poll() is None, f"the demo ended with {proc.returncode}:\n{out.text[-6000:]}"
            assert time.monotonic() < deadline, out.text[-6000:]
            time.sleep(1.0)
        text = out.text
        assert "demo complete" in text and "skipped" not in text, text[-6000:]
        assert "each enrolled with a one-time token" in text
        assert "every device verified" in text
        assert "bad candidate v2: ROLLED_BACK" in text
        assert "good candidate v3: COMPLETED" in text
        assert "detected by the controller" in text
        assert "the controller decided" in text and "retrain digits: drift in at least" in text
        assert "blessing gate: blessed" in text
        assert re.search(r"pipeline run 1 \(drift trigger, decided \d+ s after the drift\): dataset \w{12} of \d+ captured", text)
        assert "; blessed, registered as v4" in text
        assert "retrained v4: COMPLETED" in text

        found = re.search(r"web console: (http://127\.0\.0\.1:\d+)/ui \(log in with the token (\S+)\)", text)
        assert found, text[-3000:]
        with httpx.Client(base_url=found[1], headers={"Authorization": f"Bearer {found[2]}"}, timeout=60) as api:
            check_the_controller_did_the_retraining(api)
    finally:
        if proc.poll() is None:
            proc.send_signal(signal.SIGINT)  # Ctrl-C
        try:
            proc.wait(timeout=120)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
        out.close()
    assert proc.returncode == 0, out.text[-3000:]
    assert "stopping" in out.text


def check_the_controller_did_the_retraining(api: httpx.Client) -> None:
    """What the controller recorded: the decision, the run, its dataset and evaluation, v4's lineage, the devices."""
    [run] = api.get("/v1/pipeline/runs", params={"model": "digits"}).json()  # one run: the cooldown holds the next
    assert (run["trigger"], run["version"], run["parent_version"], run["cohort"]) == ("drift", 4, 3, "*"), run
    assert run["state"] == "approved" and run["dataset_sha256"], run  # approved; the demo started the rollout
    detail = api.get(f"/v1/pipeline/runs/{run['id']}").json()
    gate, ev, metrics = detail["result"]["gate"], detail["result"]["evaluation"], detail["result"]["metrics"]
    assert gate["passed"] and gate["stats"]["raw_rows"] == gate["stats"]["rows"] >= gate["stats"]["labelled"] >= 200
    assert ev["verdict"]["blessed"] and ev["verdict"]["target"] == "fleet/all"
    fleet = next(s for s in ev["slices"] if (s["set"], s["slice"]) == ("fleet", "all"))
    assert fleet["candidate"] - fleet["incumbent"] > 0.05, fleet  # the aged camera: a real difference, not noise
    assert metrics["accuracy_int8"] >= metrics["incumbent_accuracy"]

    decisions = api.get("/v1/pipeline/decisions", params={"model": "digits"}).json()
    [retrain] = [d for d in decisions if d["decision"] == "retrain"]
    assert (retrain["run_id"], retrain["trigger"], retrain["actor"]) == (run["id"], "drift", "leader"), retrain

    v4 = api.get("/v1/models/digits/versions/4").json()
    assert (v4["runtime"], v4["registered_by"], v4["parent_version"]) == ("tflite", "pipeline", 3), v4
    assert v4["approved_by"] and v4["approved_by"] != "pipeline"
    lineage = v4["lineage"]
    assert lineage["dataset_sha256"] == run["dataset_sha256"] and lineage["parent_version"] == 3
    assert lineage["trigger"]["kind"] == "drift" and lineage["evaluation"]["verdict"]["blessed"]
    assert lineage["metrics"]["accuracy_int8"] == metrics["accuracy_int8"]

    devices = api.get("/v1/devices", params={"limit": 100}).json()
    assert len(devices) == DEVICES
    assert {(d["actual"].get("production") or {}).get("version") for d in devices} == {4}
    for d in devices:  # every device's captured samples were accepted: signed with its enrolled key
        cap = api.get(f"/v1/capture/{d['id']}").json()
        assert cap["samples"] > 0 and cap["labelled"] > 0, cap

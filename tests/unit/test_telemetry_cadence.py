"""The telemetry cadence (ADR 0076): batched by default, fresh while the desired state asks, urgent when notable.

The pure rules (``agent.telemetry.cadence``, ``shared.cadence``), the sender that follows
them over a fake link, a real telemetry service on a real model marking notable windows,
and the controller's marking of devices (``controller.fleet.freshness``) on its own rows.
"""

from __future__ import annotations

import hashlib
import time
from pathlib import Path
from typing import Any

import pytest

from agent.config import parse_config
from agent.host import ModelHost
from agent.link import MqttLink
from agent.runtime import load_model
from agent.telemetry import Telemetry
from agent.telemetry.cadence import due, notable
from agent.telemetry.queue import WindowQueue
from agent.telemetry.sender import Sender
from controller.core.tables import Device
from controller.fleet.freshness import mark
from shared import bundle as bundle_fmt
from shared import wire
from shared.cadence import FRESH, experiment_holder, holders, is_fresh, rollout_holder, with_holder, without_holder
from shared.messages import Telemetry as Window
from shared.topics import Kind

pytestmark = pytest.mark.unit


# --- who asks for fresh telemetry (shared.cadence) ----------------------------------------------


def test_fresh_while_any_holder_asks_and_each_holder_lets_go_on_its_own() -> None:
    s: dict[str, Any] = {"shadow_rate": 0.2}
    assert not is_fresh(s)
    s1 = with_holder(s, rollout_holder(4))
    assert s1 == {"shadow_rate": 0.2, FRESH: ["rollout:4"]} and is_fresh(s1)
    assert with_holder(s1, "rollout:4") is None  # already there: nothing to re-sign
    s2 = with_holder(s1, experiment_holder(9))
    assert s2 is not None and holders(s2) == ("experiment:9", "rollout:4")
    s3 = without_holder(s2, "rollout:4")
    assert s3 == {"shadow_rate": 0.2, FRESH: ["experiment:9"]} and is_fresh(s3)
    assert without_holder(s3, "rollout:4") is None
    assert without_holder(s3, "experiment:9") == {"shadow_rate": 0.2}  # the key goes with the last holder


@pytest.mark.parametrize("value", [None, True, "rollout:1", [], [1, 2], [""], {"rollout:1": True}])
def test_anything_but_a_list_of_names_asks_for_nothing(value: Any) -> None:
    assert not is_fresh({FRESH: value})


# --- when a window goes (agent.telemetry.cadence) --------------------------------------------


def summary(**kw: Any) -> dict[str, Any]:
    return {"model": "m", "version": 1, "count": 100, "errors": 0, **kw}


@pytest.mark.parametrize(
    ("roles", "counters", "changed", "why"),
    [
        ({"production": summary()}, {}, False, ""),
        ({"production": summary(quality={"nan": [0, 0], "inf": [0, 0], "out_of_range": [0, 0]})}, {}, False, ""),
        ({"production": summary(), "canary": summary(errors=3)}, {}, False, "canary: 3 failed inferences"),
        ({"production": summary(quality={"nan": [0, 2], "inf": [0, 0], "out_of_range": [0, 0]})}, {}, False, "nan"),
        ({"production": summary(quality={"nan": [0], "inf": [0], "out_of_range": [5]})}, {}, False, "out_of_range"),
        ({}, {"desired_rejected": 1, "capture_bytes": 900}, False, "desired_rejected: 1"),
        ({}, {"windows_dropped": 40}, False, "windows_dropped: 40"),
        ({}, {"capture_samples": 3, "desired_received": 1}, False, ""),
        ({"production": summary()}, {}, True, "a role changed model"),
    ],
)
def test_what_makes_a_window_notable(roles: dict[str, Any], counters: dict[str, int], changed: bool, why: str) -> None:
    got = notable(roles, counters, model_changed=changed)
    assert (why in got) if why else got == ""
    assert bool(got) == bool(why)


def test_windows_wait_for_a_full_message_or_the_longest_wait_unless_fresh_or_urgent() -> None:
    rule = {"full": 10, "max_wait_s": 600.0}
    assert not due(0, 9999, **rule, fresh=True, urgent=True)  # nothing to send
    assert not due(3, 120, **rule, fresh=False, urgent=False)
    assert due(10, 0, **rule, fresh=False, urgent=False)
    assert due(3, 600, **rule, fresh=False, urgent=False)
    assert due(1, 0, **rule, fresh=True, urgent=False)
    assert due(1, 0, **rule, fresh=False, urgent=True)


# --- the sender follows the rule --------------------------------------------------------------


class FakeLink:
    """What the sender uses of MqttLink: publish_bytes, the connection state, the ack callbacks."""

    def __init__(self) -> None:
        self.connected = True
        self.connects = 1
        self.on_published: Any = None
        self.on_window_ack: Any = None
        self.published: list[bytes] = []

    def publish_bytes(self, kind: Kind, payload: bytes) -> int:
        assert kind is Kind.TELEMETRY
        self.published.append(payload)
        return len(self.published)

    def messages(self) -> list[list[int]]:
        return [[w.seq for w in wire.decode_windows(p)] for p in self.published]


def put(q: WindowQueue, seq: int, boot: str = "b1") -> None:
    agent = {"version": "1.0", "boot": boot, "window": seq}
    w = Window(device_id="dev-1", seq=seq, sent_at=1.0, window_start=60.0 * seq, window_s=60.0, agent=agent)
    q.put(seq, time.time(), lambda dropped: wire.encode([w]))


def test_batched_by_default_each_window_at_once_while_fresh_and_back(tmp_path: Path) -> None:
    link, q = FakeLink(), WindowQueue(tmp_path / "q.db", 100)
    sampling: dict[str, Any] = {}
    sender = Sender(link, q, windows_per_publish=4, batch_wait_s=3600, fresh=lambda: is_fresh(sampling))  # type: ignore[arg-type]
    for s in (1, 2, 3):
        put(q, s)
        sender.step()
    assert link.messages() == []  # three windows wait for a fourth
    put(q, 4)
    sender.step()
    assert link.messages() == [[1, 2, 3, 4]]

    sampling[FRESH] = ["rollout:7"]  # the desired state of a rollout's device
    put(q, 5)
    sender.step()
    put(q, 6)
    sender.step()
    assert link.messages()[1:] == [[5], [6]]

    del sampling[FRESH]  # the rollout ended
    for s in (7, 8):
        put(q, s)
        sender.step()
    assert len(link.messages()) == 3
    link.on_window_ack(tuple(range(1, 7)))
    sender.step()
    assert q.seqs() == [7, 8]  # acknowledged ones left the queue; the batch waits on


def test_switching_to_fresh_sends_what_waits_in_one_message(tmp_path: Path) -> None:
    link, q = FakeLink(), WindowQueue(tmp_path / "q.db", 100)
    fresh = [False]
    sender = Sender(link, q, windows_per_publish=10, batch_wait_s=3600, fresh=lambda: fresh[0])  # type: ignore[arg-type]
    for s in range(1, 6):
        put(q, s)
    sender.step()
    assert link.messages() == []
    fresh[0] = True
    sender.step()
    assert link.messages() == [[1, 2, 3, 4, 5]]


def test_a_notable_window_goes_at_once_with_those_before_it_and_a_drain_sends_the_rest(tmp_path: Path) -> None:
    link, q = FakeLink(), WindowQueue(tmp_path / "q.db", 100)
    sender = Sender(link, q, windows_per_publish=10, batch_wait_s=3600)  # type: ignore[arg-type]
    for s in (1, 2, 3):
        put(q, s)
    sender.hurry(3)
    sender.step()
    put(q, 4)
    sender.step()
    assert link.messages() == [[1, 2, 3]]  # window 4 is not notable: it waits
    link.on_window_ack((1, 2, 3))
    assert not sender.drain(0.0)  # a clean stop: what waits goes now (no sender thread here: step by hand)
    sender.step()
    assert link.messages()[1:] == [[4]]


def test_windows_queued_before_a_restart_go_in_a_message_of_their_own(tmp_path: Path) -> None:
    link, q = FakeLink(), WindowQueue(tmp_path / "q.db", 100)
    for s in (1, 2, 3):
        put(q, s, boot="before")
    for s in range(4, 11):
        put(q, s, boot="after")
    sender = Sender(link, q, windows_per_publish=10, batch_wait_s=3600)  # type: ignore[arg-type]
    sender.step()
    sender.hurry(10)
    sender.step()
    assert link.messages() == [[1, 2, 3], [4, 5, 6, 7, 8, 9, 10]]
    boots = [{w.agent["boot"] for w in wire.decode_windows(p)} for p in link.published]
    assert boots == [{"before"}, {"after"}]


# --- a real telemetry service marks notable windows --------------------------------------------


def _service(tmp_path: Path, make_bundle: Any) -> tuple[Telemetry, ModelHost]:
    raw = make_bundle(1)
    b = bundle_fmt.read(raw)
    (tmp_path / "model.onnx").write_bytes(b.model)
    model = load_model(b.manifest, tmp_path / "model.onnx", hashlib.sha256(raw).hexdigest())
    host = ModelHost()
    host.swap("production", model)
    cfg = parse_config({"device_id": "d1", "data_dir": str(tmp_path / "agent"), "director_public_keys": ["0" * 64]})
    link = MqttLink(cfg, lambda: 0, lambda p: None, lambda: None)  # never started: windows stay queued
    seq = iter(range(1, 1_000_000))
    tel = Telemetry(cfg, host, link, lambda: next(seq), "test", system=None)
    host.recording, host.on_backlog = True, tel.flush
    return tel, host


def test_the_service_hurries_windows_with_failed_calls_or_bad_inputs_and_not_quiet_ones(tmp_path: Path, make_bundle):
    from firmware_sim.modelgen import load_digits

    tel, host = _service(tmp_path, make_bundle)
    assert (tel.sender.windows_per_publish, tel.sender.batch_wait_s) == (10, 600.0)  # the defaults: 10 windows, 10 min
    x = load_digits()[0]
    for i in range(20):
        host.predict(x[i : i + 1].tolist())
    quiet = tel.close_window()
    assert tel.sender._urgent_through < quiet
    bad = x[0:1].copy()
    bad[0, 3] = float("nan")
    host.predict(bad.tolist())
    noisy = tel.close_window()
    assert tel.sender._urgent_through == noisy
    assert not tel.sender.fresh()
    host.sampling = {FRESH: ["experiment:2"]}
    assert tel.sender.fresh() and tel.local_status()["cadence"] == "fresh"
    assert tel.local_status()["fresh_for"] == ["experiment:2"]
    tel.queue.close()


# --- the controller marks its devices -----------------------------------------------------------


def test_marking_devices_changes_only_those_that_differ() -> None:
    a, b = Device(id="a", sampling={"shadow_rate": 0.5}), Device(id="b", sampling={FRESH: ["rollout:1"]})
    assert [d.id for d in mark([a, b], "rollout:1")] == ["a"]
    assert a.sampling == {"shadow_rate": 0.5, FRESH: ["rollout:1"]}
    assert [d.id for d in mark([a, b], "rollout:1", wanted=False)] == ["a", "b"]
    assert a.sampling == {"shadow_rate": 0.5} and b.sampling == {}

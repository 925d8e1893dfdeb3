"""Telemetry receiving for tests and benchmarks: a receiver that survives broker restarts, queue snapshots."""

from __future__ import annotations

import getpass
import sqlite3
import threading
import time
import uuid
from pathlib import Path

import paho.mqtt.client as mqtt
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from paho.mqtt.enums import CallbackAPIVersion

from controller.identity.broker_config import MosquittoConfig
from firmware_sim.mosquitto import MosquittoProcess, free_port
from shared.errors import ProtocolError
from shared.messages import Telemetry, WindowAck, encode
from shared.signing import public_key_hex
from shared.topics import Kind, device_topic
from shared.wire import decode_windows


def director_key_hex() -> str:
    return public_key_hex(Ed25519PrivateKey.generate().public_key())


def persistent_broker(workdir: Path) -> MosquittoProcess:
    """A private broker that keeps sessions across restarts (so the receiver misses nothing)."""
    data = workdir / "data"
    data.mkdir(parents=True, exist_ok=True)
    # Started as root, mosquitto switches to its own user, which cannot write a private temp dir; stay us.
    user = (f"user {getpass.getuser()}",)
    return MosquittoProcess(workdir, MosquittoConfig(port=free_port(), data_dir=data, extra=user))


class TelemetryReceiver:
    """A QoS 1 subscriber with a persistent session; decodes windows, dedupes them by seq and acks them
    to the agent as the controller does (``controller/telemetry/acks.py``)."""

    def __init__(self, host: str, port: int, device_id: str, *, ack: bool = True) -> None:
        """``ack=False``: a bystander that only watches (the agent waits for the controller's acks)."""
        self.windows: dict[int, Telemetry] = {}
        self.messages: list[tuple[float, tuple[int, ...]]] = []  # (when received, the seqs it carried), in order
        self.received = 0
        self.malformed = 0
        self._lock = threading.Lock()
        topic = device_topic(device_id, Kind.TELEMETRY)
        c = mqtt.Client(CallbackAPIVersion.VERSION2, client_id=f"recv-{uuid.uuid4().hex[:8]}", clean_session=False)
        c.reconnect_delay_set(1, 1)
        c.on_connect = lambda cl, *_: cl.subscribe(topic, qos=1)
        c.on_message = self._on_message
        c.connect(host, port)
        c.loop_start()
        self.client = c
        self._ack_topic = device_topic(device_id, Kind.ACK) if ack else None

    def _on_message(self, client: mqtt.Client, userdata: object, msg: mqtt.MQTTMessage) -> None:
        try:
            ws = decode_windows(bytes(msg.payload))
        except ProtocolError:
            with self._lock:
                self.malformed += 1
            return
        with self._lock:
            self.received += 1
            self.messages.append((time.time(), tuple(w.seq for w in ws)))
            for w in ws:
                self.windows.setdefault(w.seq, w)
        if self._ack_topic is not None:
            client.publish(self._ack_topic, encode(WindowAck(seqs=tuple(w.seq for w in ws))), qos=0)

    def snapshot(self) -> dict[int, Telemetry]:
        with self._lock:
            return dict(self.windows)

    def sizes(self, since: float = 0.0) -> list[int]:
        """Windows per message received since ``since`` (unix seconds), in order."""
        with self._lock:
            return [len(seqs) for at, seqs in self.messages if at >= since]

    def close(self) -> None:
        self.client.disconnect()
        self.client.loop_stop()


def queued_seqs(data_dir: Path, table: str = "windows") -> set[int]:
    """Seqs waiting in an agent's on-disk queue (read-only; safe while the agent runs): its telemetry ``windows``,
    or its ``events`` (ADR 0078; an agent that does not keep its events has no such table: empty)."""
    if table not in ("windows", "events"):
        raise ValueError(f"no queue table {table!r}")
    path = data_dir / "telemetry.db"
    if not path.exists():
        return set()
    db = sqlite3.connect(f"file:{path}?mode=ro", uri=True, timeout=5)
    try:
        return {int(s) for (s,) in db.execute(f"SELECT seq FROM {table}")}  # noqa: S608 (one of two names)
    except sqlite3.OperationalError as exc:
        if "no such table" in str(exc):
            return set()
        raise
    finally:
        db.close()

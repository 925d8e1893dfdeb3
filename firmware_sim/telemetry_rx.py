"""Telemetry receiving for tests and benchmarks: a receiver that survives broker restarts, queue snapshots."""

from __future__ import annotations

import getpass
import sqlite3
import threading
import uuid
from pathlib import Path

import paho.mqtt.client as mqtt
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from paho.mqtt.enums import CallbackAPIVersion

from controller.identity.broker_config import MosquittoConfig
from firmware_sim.mosquitto import MosquittoProcess, free_port
from shared.errors import ProtocolError
from shared.messages import Telemetry, decode
from shared.signing import public_key_hex
from shared.topics import Kind, device_topic


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
    """A QoS 1 subscriber with a persistent session; decodes windows and dedupes them by seq."""

    def __init__(self, host: str, port: int, device_id: str) -> None:
        self.windows: dict[int, Telemetry] = {}
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

    def _on_message(self, client: mqtt.Client, userdata: object, msg: mqtt.MQTTMessage) -> None:
        try:
            w = decode(Kind.TELEMETRY, bytes(msg.payload))
        except ProtocolError:
            with self._lock:
                self.malformed += 1
            return
        assert isinstance(w, Telemetry)
        with self._lock:
            self.received += 1
            self.windows.setdefault(w.seq, w)

    def snapshot(self) -> dict[int, Telemetry]:
        with self._lock:
            return dict(self.windows)

    def close(self) -> None:
        self.client.disconnect()
        self.client.loop_stop()


def queued_seqs(data_dir: Path) -> set[int]:
    """Seqs waiting in an agent's on-disk queue (read-only; safe while the agent runs)."""
    path = data_dir / "telemetry.db"
    if not path.exists():
        return set()
    db = sqlite3.connect(f"file:{path}?mode=ro", uri=True, timeout=5)
    try:
        return {int(s) for (s,) in db.execute("SELECT seq FROM windows")}
    finally:
        db.close()

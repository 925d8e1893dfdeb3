"""Test helpers for the secure broker: real certificates from a real device CA, real TLS clients."""

from __future__ import annotations

import datetime as dt
import ssl
import threading
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import paho.mqtt.client as mqtt
from paho.mqtt.enums import CallbackAPIVersion

from controller.identity import pki
from controller.identity.broker_auth import ClientIdentity
from shared.csr import make_csr


def device_identity(
    ca: pki.DeviceCA,
    device_id: str,
    directory: Path,
    *,
    validity: dt.timedelta = pki.DEFAULT_DEVICE_VALIDITY,
    now: dt.datetime | None = None,
    trust: Path | None = None,
) -> tuple[ClientIdentity, pki.Issued]:
    """A device key and a certificate signed by ``ca`` (the way enrolment makes them)."""
    directory.mkdir(parents=True, exist_ok=True)
    key = pki.new_key()
    issued = ca.issue_device(device_id, make_csr(key, device_id), validity=validity, now=now)
    ident = ClientIdentity(trust or directory / "ca.pem", directory / f"{device_id}.pem", directory / f"{device_id}.key")
    if trust is None:
        ident.ca.write_bytes(ca.cert_pem)
    ident.cert.write_bytes(issued.pem)
    ident.key.write_bytes(pki.key_pem(key))
    return ident, issued


@dataclass
class TlsClient:
    """A paho client over mTLS that records what happens to it."""

    host: str
    port: int
    ca: Path
    cert: Path | None = None
    key: Path | None = None
    messages: list[tuple[str, bytes]] = field(default_factory=list)
    events: list[str] = field(default_factory=list)
    suback: list[list[int]] = field(default_factory=list)
    pubacks: dict[int, int] = field(default_factory=dict)
    client_id: str | None = None  # None: a random one
    protocol: int = mqtt.MQTTv5  # or mqtt.MQTTv311 (SUBACK failure is then 0x80)

    def __post_init__(self) -> None:
        self._cond = threading.Condition()
        self.connected = threading.Event()
        self.disconnected = threading.Event()
        c = mqtt.Client(
            CallbackAPIVersion.VERSION2, client_id=self.client_id or f"t-{uuid.uuid4().hex[:8]}", protocol=self.protocol
        )
        ctx = ssl.create_default_context(cafile=str(self.ca))
        if self.cert is not None and self.key is not None:
            ctx.load_cert_chain(str(self.cert), str(self.key))
        c.tls_set_context(ctx)
        c.on_connect = self._on_connect
        c.on_disconnect = self._on_disconnect
        c.on_message = self._on_message
        c.on_subscribe = lambda cl, u, mid, codes, props: self._note_suback([int(rc.value) for rc in codes])
        c.on_publish = lambda cl, u, mid, rc, props: self._note_puback(mid, int(rc.value))
        self.client = c

    def _on_connect(self, client: Any, userdata: Any, flags: Any, reason: Any, props: Any = None) -> None:
        with self._cond:
            self.events.append(f"connect:{reason}")
            if not reason.is_failure:
                self.connected.set()
            self._cond.notify_all()

    def _on_disconnect(self, client: Any, userdata: Any, flags: Any, reason: Any, props: Any = None) -> None:
        with self._cond:
            self.events.append(f"disconnect:{reason}")
            self.connected.clear()
            self.disconnected.set()
            self._cond.notify_all()

    def _on_message(self, client: Any, userdata: Any, msg: mqtt.MQTTMessage) -> None:
        with self._cond:
            self.messages.append((msg.topic, bytes(msg.payload)))
            self._cond.notify_all()

    def _note_suback(self, codes: list[int]) -> None:
        with self._cond:
            self.suback.append(codes)
            self._cond.notify_all()

    def _note_puback(self, mid: int, rc: int) -> None:
        with self._cond:
            self.pubacks[mid] = rc
            self._cond.notify_all()

    def connect(self, timeout: float = 5.0) -> bool:
        """Try to connect; True when the broker accepted us within ``timeout``."""
        try:
            self.client.connect(self.host, self.port, keepalive=10)
        except (OSError, ssl.SSLError) as exc:
            self.events.append(f"error:{exc}")
            return False
        self.client.loop_start()
        deadline = time.monotonic() + timeout
        with self._cond:
            while not (self.connected.is_set() or self.disconnected.is_set() or any("fail" in e.lower() for e in self.events)):
                if not self._cond.wait(max(deadline - time.monotonic(), 0)) and time.monotonic() >= deadline:
                    break
        ok = self.connected.is_set()
        if ok:
            time.sleep(0.2)  # a revoked or unknown certificate may be dropped just after CONNACK (TLS 1.3)
            ok = self.connected.is_set()
        return ok

    def subscribe(self, topic: str, timeout: float = 5.0) -> list[int]:
        n = len(self.suback)
        self.client.subscribe(topic, qos=1)
        return self.wait(lambda: len(self.suback) > n, timeout, "no SUBACK") and self.suback[n]

    def publish(self, topic: str, payload: bytes, *, retain: bool = False, timeout: float = 5.0) -> int:
        """Publish at QoS 1 and return the PUBACK reason code (MQTT 5: 135 = not authorized)."""
        info = self.client.publish(topic, payload, qos=1, retain=retain)
        self.wait(lambda: info.mid in self.pubacks, timeout, "no PUBACK")
        return self.pubacks[info.mid]

    def wait(self, predicate: Any, timeout: float, what: str) -> bool:
        deadline = time.monotonic() + timeout
        with self._cond:
            while not predicate():
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    raise TimeoutError(f"{what} within {timeout}s; events {self.events}")
                self._cond.wait(remaining)
        return True

    def received(self, topic: str) -> list[bytes]:
        with self._cond:
            return [p for t, p in self.messages if t == topic]

    def close(self) -> None:
        self.client.disconnect()
        self.client.loop_stop()

"""A real MQTT subscriber for tests: collects messages and waits for conditions."""

from __future__ import annotations

import json
import ssl
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import paho.mqtt.client as mqtt


class Watcher:
    def __init__(self, host: str, port: int, *topics: str, tls: tuple[Path, Path, Path] | None = None) -> None:
        """``tls``: (CA, certificate, key) to connect over mTLS, as a controller identity does."""
        self.messages: list[tuple[str, bytes, bool]] = []
        self._cond = threading.Condition()
        self._ready = threading.Event()
        c = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2)
        c.on_connect = lambda cl, *_: cl.subscribe([(t, 1) for t in topics])
        c.on_subscribe = lambda *_: self._ready.set()  # the SUBACK: from here on nothing published is missed
        c.on_message = self._on_message
        if tls is not None:
            ctx = ssl.create_default_context(cafile=str(tls[0]))
            ctx.load_cert_chain(str(tls[1]), str(tls[2]))
            c.tls_set_context(ctx)
        c.connect(host, port)
        c.loop_start()
        if not self._ready.wait(10):
            raise TimeoutError("watcher could not connect and subscribe")
        self.client = c

    def _on_message(self, client: Any, userdata: Any, msg: mqtt.MQTTMessage) -> None:
        with self._cond:
            self.messages.append((msg.topic, msg.payload, bool(msg.retain)))
            self._cond.notify_all()

    def json_messages(self, topic_suffix: str = "") -> list[dict[str, Any]]:
        out = []
        with self._cond:
            for topic, payload, _ in self.messages:
                if topic.endswith(topic_suffix):
                    try:
                        out.append(json.loads(payload))
                    except ValueError:
                        pass
        return out

    def wait_for(
        self, predicate: Callable[[dict[str, Any]], bool], topic_suffix: str = "", timeout: float = 30.0
    ) -> dict[str, Any]:
        deadline = time.monotonic() + timeout
        while True:
            for m in self.json_messages(topic_suffix):
                if predicate(m):
                    return m
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise TimeoutError(
                    f"no message on *{topic_suffix} matched within {timeout}s; got {self.json_messages(topic_suffix)[-5:]}"
                )
            with self._cond:
                self._cond.wait(min(remaining, 0.5))

    def publish(self, topic: str, payload: bytes, retain: bool = False) -> None:
        self.client.publish(topic, payload, qos=1, retain=retain).wait_for_publish(5)

    def close(self) -> None:
        self.client.disconnect()
        self.client.loop_stop()

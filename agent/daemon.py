"""Wires the agent together: store, models, local API, MQTT link, updater."""

from __future__ import annotations

import logging
import os
import platform
import signal
import threading
import time
from dataclasses import asdict
from typing import Any

from agent import __version__
from agent.config import AgentConfig
from agent.host import ModelHost
from agent.identity import make_renewer
from agent.link import MqttLink
from agent.localapi.server import LocalApi, SocketServer
from agent.ota.build import make_updater
from agent.ota.store import SeqCounter, Store
from agent.ota.updater import Checkpoint
from agent.telemetry import Telemetry
from shared.errors import SchemaError
from shared.messages import MAX_KIND, MAX_MESSAGE, OFFLINE, ONLINE, Event, Status, now
from shared.signing import key_id, load_public_key
from shared.topics import Kind

log = logging.getLogger(__name__)


def _test_checkpoint(cfg: AgentConfig) -> Checkpoint | None:
    """The crash tests' pause hook: only when its environment variable is set and the config says
    ``development = true`` (it logs a warning then); set on any other agent, it is refused with an error."""
    want = os.environ.get("EDGEFLEET_TEST_PAUSE_AT")
    if not want:
        return None
    if not cfg.development:
        log.error(
            "EDGEFLEET_TEST_PAUSE_AT=%s is set but this agent is not a development agent (development = true in its "
            "config): the test pause hook is refused and updates run normally; remove the variable",
            want,
        )
        return None
    from agent.ota import testhook

    return testhook.from_env(cfg.data_dir)


class Agent:
    def __init__(self, cfg: AgentConfig) -> None:
        self.cfg = cfg
        self.store = Store(cfg.data_dir)
        self.seq = SeqCounter(cfg.data_dir / "seq")
        self.host = ModelHost(cfg.device_id)
        keys = [load_public_key(k) for k in cfg.director_public_keys]
        trusted = {key_id(k): k for k in keys}
        self.updater = make_updater(cfg, self.store, self.host, trusted, self.report, self.publish_status, _test_checkpoint(cfg))
        self.link = MqttLink(cfg, self.seq.next, self._on_desired, self._on_connect)  # first: may refuse the identity
        self.renewer = make_renewer(cfg, self.link.reload_identity)
        self.telemetry = Telemetry(cfg, self.host, self.link, self.seq.next, __version__)
        api = LocalApi(self.host, feedback=self.telemetry.feedback, status=self.local_status)
        self.api = SocketServer(cfg.socket_path, api)
        self.http = None
        if cfg.http_port is not None:
            from agent.localapi.http import HttpServer

            self.http = HttpServer(cfg.http_port, api)
        self._stop = threading.Event()

    def status(self, state: str = ONLINE) -> Status:
        return Status(
            device_id=self.cfg.device_id,
            seq=self.seq.next(),
            sent_at=now(),
            state=state,
            agent_version=__version__,
            hardware={"arch": self.cfg.arch, "machine": platform.node(), "python": platform.python_version()},
            models=self.updater.running(),  # what really serves
            ota=self.updater.ota_status(),
        )

    def local_status(self) -> dict[str, Any]:
        """What ``edgefleet-agent status`` shows: broker link, OTA state, models, telemetry queue."""
        return {
            "device_id": self.cfg.device_id,
            "agent_version": __version__,
            "broker": {
                "connected": self.link.connected,
                "host": self.cfg.broker.host,
                "port": self.cfg.broker.port,
                "last_contact": self.link.last_contact,
            },
            "ota": self.updater.ota_status(),
            "models": {role: asdict(m) for role, m in self.updater.running().items()},
            "telemetry": {"queue_depth": self.telemetry.queue.pending(), "windows": self.telemetry.windows},
        }

    def _on_connect(self) -> None:
        self.publish_status()
        self.updater.reconnected()  # the network is back: retry what failed for want of it

    def publish_status(self) -> None:
        self.link.publish(Kind.STATUS, self.status(), retain=True)

    def _on_desired(self, payload: bytes) -> None:
        self.telemetry.count("desired_received")
        self.updater.submit(payload)

    def report(self, kind: str, severity: str, message: str, detail: dict[str, Any]) -> None:
        if kind == "desired.rejected":
            self.telemetry.count("desired_rejected")
        log.log(logging.WARNING if severity != "info" else logging.INFO, "event %s: %s", kind, message)
        event = Event(
            device_id=self.cfg.device_id, seq=self.seq.next(), sent_at=now(), kind=kind[:MAX_KIND], severity=severity,
            message=message[:MAX_MESSAGE], detail=detail,
        )  # fmt: skip
        try:
            self.link.publish(Kind.EVENTS, event)
        except (SchemaError, ValueError) as exc:  # a report must never stop the updater
            log.error("event %s not sent: %s", kind, exc)

    def start(self) -> None:
        self.updater.restore()
        self.api.start()
        if self.http is not None:
            self.http.start()
        self.updater.start()
        self.telemetry.start()
        self.link.start()
        if self.renewer is not None:
            self.renewer.start()
        log.info("agent %s started for device %s (socket %s)", __version__, self.cfg.device_id, self.cfg.socket_path)

    def stop(self) -> None:
        self.telemetry.stop()
        if self.renewer is not None:
            self.renewer.stop()
        self.link.stop(goodbye=self.status(OFFLINE))
        self.updater.stop()
        self.api.stop()
        if self.http is not None:
            self.http.stop()

    def run_forever(self) -> None:
        for sig in (signal.SIGTERM, signal.SIGINT):
            signal.signal(sig, lambda *_: self._stop.set())
        self.start()
        try:
            while not self._stop.wait(1.0):
                pass
        finally:
            log.info("stopping")
            self.stop()
            time.sleep(0)

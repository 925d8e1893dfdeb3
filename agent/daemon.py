"""Wires the agent together: store, models, local API, MQTT link, updater.

An :class:`Agent` is an object with no process-wide state: signal handlers,
logging, memory settings and test hooks from the environment belong to the
entry point (``agent/cli.py``), so one process may hold many agents (the
simulator), each given the process's shared pieces (a network loop, a
loaded-model cache) when it has them.
"""

from __future__ import annotations

import logging
import platform
import sqlite3
import threading
from dataclasses import asdict
from typing import TYPE_CHECKING, Any

from agent import __version__
from agent.config import AgentConfig
from agent.host import ModelHost
from agent.identity import make_renewer
from agent.link import MqttLink
from agent.localapi.server import LocalApi, SocketServer
from agent.ota.build import make_updater
from agent.ota.checks import Verify
from agent.ota.store import SeqCounter, Store
from agent.ota.updater import Checkpoint
from agent.telemetry import Telemetry
from shared.errors import SchemaError
from shared.messages import MAX_KIND, MAX_MESSAGE, OFFLINE, ONLINE, Event, Status, encode, now
from shared.topics import Kind

if TYPE_CHECKING:
    from agent.mqttloop import MqttLoop
    from agent.runtime.cache import ModelCache
    from agent.telemetry.system import SystemSource

log = logging.getLogger(__name__)
TRIM_EVERY_S = 10  # seconds between malloc trims (agent.memory.trim), in the process's main loop


def director_keys(cfg: AgentConfig) -> Verify:
    """The director keys, loaded here only when this process checks signatures itself: with
    ``[download] isolated`` the update process does, and the agent never imports ``cryptography``."""
    if cfg.download.isolated:
        return {}  # make_updater verifies through the update process
    from shared.signing import key_id, load_public_key

    keys = [load_public_key(k) for k in cfg.director_public_keys]
    return {key_id(k): k for k in keys}


class Agent:
    def __init__(
        self,
        cfg: AgentConfig,
        *,
        checkpoint: Checkpoint | None = None,  # an observer of OTA progress (the crash tests' pause hook)
        mqtt_loop: MqttLoop | None = None,  # a network loop shared with other agents; None: the link's own thread
        models: ModelCache | None = None,  # loaded models shared with other agents of this process
        system: SystemSource | None = None,  # system gauges for telemetry; None: psutil's
        local_socket: bool = True,  # serve the local API on cfg.socket_path (apps may call ``local`` in-process)
    ) -> None:
        self.cfg = cfg
        self.store = Store(cfg.data_dir)
        self.seq = SeqCounter(cfg.data_dir / "seq")
        self.host = ModelHost(cfg.device_id)
        trusted = director_keys(cfg)
        self.updater = make_updater(
            cfg, self.store, self.host, trusted, self.report, self.publish_status, checkpoint, models=models
        )
        # first: may refuse the identity
        self.link = MqttLink(cfg, self.seq.next, self._on_desired, self._on_connect, loop=mqtt_loop)
        self.renewer = make_renewer(cfg, self.link.reload_identity)
        self.telemetry = Telemetry(cfg, self.host, self.link, self.seq.next, __version__, system=system, stream=self.seq.stream)
        self.local = LocalApi(
            self.host, feedback=self.telemetry.feedback, status=self.local_status, summary=self.telemetry.add_summary
        )
        self.api = SocketServer(cfg.socket_path, self.local) if local_socket else None
        api = self.local
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
            "telemetry": self.telemetry.local_status(),
            "batch_features": self.host.batch.snapshot(),
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
            message=message[:MAX_MESSAGE], detail=detail, stream=self.seq.stream,
        )  # fmt: skip
        try:  # a report must never stop the updater
            payload = encode(event)
        except (SchemaError, ValueError) as exc:
            log.error("event %s not sent: %s", kind, exc)
            return
        try:  # kept on disk until a controller acknowledges it (ADR 0078)
            self.telemetry.add_event(event.seq, payload)
        except (OSError, sqlite3.Error) as exc:  # e.g. a full disk: sent as before, kept only in memory
            log.warning("event %s not stored (%s); sent without waiting for an ack", kind, exc)
            self.link.publish(Kind.EVENTS, event)

    def start(self) -> None:
        self.updater.restore()
        if self.api is not None:
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
        if self.api is not None:
            self.api.stop()
        if self.http is not None:
            self.http.stop()

    def request_stop(self) -> None:
        """Make ``run_until_stopped`` return (safe from a signal handler: sets an event)."""
        self._stop.set()

    def run_until_stopped(self) -> None:
        """Start, serve until ``request_stop``, stop cleanly (the goodbye status, the partial window)."""
        from agent.memory import trim

        self.start()
        try:
            ticks = 0
            while not self._stop.wait(1.0):
                ticks += 1
                if ticks % TRIM_EVERY_S == 0:
                    trim()  # free heap pages back to the system: a flat resident size over months
        finally:
            log.info("stopping")
            self.stop()

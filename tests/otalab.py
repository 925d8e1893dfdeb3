"""A real OTA test bench: TUF repository with real keys, a real HTTP server, a real director.

``RepoServer`` serves ``/metadata/<name>`` from an :class:`ImageRepository` and
``/bundles/<sha256>.tar`` from a directory over HTTP, with ``Range`` support
and switchable misbehaviour (slow trickle, endless data, replaced files) so
attack tests exercise the agent's real fetcher, ngclient and updater.
"""

from __future__ import annotations

import hashlib
import json
import threading
import time
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from agent.config import HealthConfig
from agent.host import ModelHost
from agent.ota.fetcher import Fetcher
from agent.ota.store import Store
from agent.ota.trust import ImageRepoClient
from agent.ota.updater import Updater
from controller.fleet.director import Director
from controller.release.imagerepo import DevKeys, ImageRepository
from shared import bundle as bundle_fmt
from shared.canonical import canonical_json
from shared.messages import Assignment
from shared.signing import key_id


@dataclass
class Faults:
    trickle: float = 0.0  # seconds between 64-byte pieces of a bundle (slow retrieval)
    extra_bytes: int = 0  # appended to every bundle (endless data)
    replace: dict[str, bytes] = field(default_factory=dict)  # metadata name -> bytes served instead
    fail_after: int | None = None  # bundle bytes sent before the connection drops (once)
    range_requests: list[str] = field(default_factory=list)
    ignore_range: bool = False  # answer 200 with the whole bundle even to a Range request
    stall_after: int | None = None  # bundle bytes sent at full speed before the rest trickles (once): caught mid-way


class RepoServer:
    def __init__(self, metadata_dir: Path, bundle_dir: Path) -> None:
        self.metadata_dir = metadata_dir
        self.bundle_dir = bundle_dir
        self.faults = Faults()
        self.requests: list[str] = []  # every path asked for, in order
        outer = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args: Any) -> None:
                pass

            def do_GET(self) -> None:
                outer._handle(self)

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.httpd.daemon_threads = True
        self.thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)
        self.thread.start()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.httpd.server_address[1]}"

    def _handle(self, h: BaseHTTPRequestHandler) -> None:
        f = self.faults
        self.requests.append(h.path)
        try:
            if h.path.startswith("/metadata/"):
                name = h.path.removeprefix("/metadata/")
                data = f.replace.get(name)
                if data is None:
                    p = self.metadata_dir / name
                    if "/" in name or not p.is_file():
                        h.send_error(404)
                        return
                    data = p.read_bytes()
                self._send(h, 200, data)
                return
            if h.path.startswith("/bundles/"):
                p = self.bundle_dir / h.path.removeprefix("/bundles/")
                if not p.is_file():
                    h.send_error(404)
                    return
                data = p.read_bytes() + b"\0" * f.extra_bytes
                start = 0
                rng = None if f.ignore_range else h.headers.get("Range")
                if rng:
                    f.range_requests.append(rng)
                    start = int(rng.removeprefix("bytes=").split("-")[0])
                body = data[start:]
                if f.fail_after is not None:
                    cut, f.fail_after = f.fail_after, None
                    h.send_response(206 if rng else 200)
                    h.send_header("Content-Length", str(len(body)))
                    h.end_headers()
                    h.wfile.write(body[:cut])
                    h.wfile.flush()
                    return  # connection closes short
                if f.stall_after is not None:
                    fast, f.stall_after = f.stall_after, None
                    h.send_response(206 if rng else 200)
                    h.send_header("Content-Length", str(len(body)))
                    h.end_headers()
                    h.wfile.write(body[:fast])
                    h.wfile.flush()
                    for i in range(fast, len(body), 64):
                        time.sleep(0.1)
                        h.wfile.write(body[i : i + 64])
                        h.wfile.flush()
                    return
                if f.trickle:
                    h.send_response(200)
                    h.send_header("Content-Length", str(len(body)))
                    h.end_headers()
                    for i in range(0, len(body), 64):
                        h.wfile.write(body[i : i + 64])
                        h.wfile.flush()
                        time.sleep(f.trickle)
                    return
                status = 206 if rng else 200
                extra = {"Content-Range": f"bytes {start}-{len(data) - 1}/{len(data)}"} if rng else {}
                self._send(h, status, body, extra)
                return
            h.send_error(404)
        except (BrokenPipeError, ConnectionResetError):
            pass

    @staticmethod
    def _send(h: BaseHTTPRequestHandler, status: int, data: bytes, headers: dict[str, str] | None = None) -> None:
        h.send_response(status)
        h.send_header("Content-Length", str(len(data)))
        for k, v in (headers or {}).items():
            h.send_header(k, v)
        h.end_headers()
        h.wfile.write(data)

    def close(self) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()


class Lab:
    """Keys, image repository, director, HTTP server; makes updaters and desired states."""

    def __init__(self, root: Path, expiry: dict[str, Any] | None = None) -> None:
        self.root = root
        self.keys = DevKeys.load_or_create(root / "keys")
        self.repo = ImageRepository.create(root / "repo", self.keys, expiry=expiry)
        self.bundle_dir = root / "served"
        self.bundle_dir.mkdir()
        self.server = RepoServer(self.repo.metadata_dir, self.bundle_dir)
        self.director = Director(Ed25519PrivateKey.generate())
        self.counter = 0
        self.events: list[dict[str, Any]] = []

    # -- the release side --------------------------------------------------------
    def publish(self, bundle: bytes, *, hardware: dict[str, Any] | None = None, signers: Any = None) -> Assignment:
        """Serve ``bundle`` and list it in the TUF targets (release threshold by default)."""
        m = bundle_fmt.read(bundle).manifest
        sha = hashlib.sha256(bundle).hexdigest()
        (self.bundle_dir / f"{sha}.tar").write_bytes(bundle)
        self.repo.add_bundle(
            model=m.name,
            version=m.version,
            sha256=sha,
            length=len(bundle),
            runtime=m.runtime,
            hardware=m.hardware if hardware is None else hardware,
            signers=signers if signers is not None else self.keys.release[: self.keys.release_threshold],
            online=self.keys.online,
        )
        return self.assignment(bundle)

    def assignment(self, bundle: bytes) -> Assignment:
        m = bundle_fmt.read(bundle).manifest
        sha = hashlib.sha256(bundle).hexdigest()
        return Assignment(
            model=m.name, version=m.version, sha256=sha, length=len(bundle), url=f"{self.server.url}/bundles/{sha}.tar"
        )

    # -- the director side -------------------------------------------------------
    def desired(self, device_id: str, a: Assignment, *, role: str = "production", counter: int | None = None) -> bytes:
        if counter is None:
            self.counter += 1
            counter = self.counter
        return canonical_json(self.director.sign_desired(device_id, counter, {role: a}, 3600))

    @property
    def director_key_hex(self) -> str:
        return self.director.public_key_hex

    # -- the device side ---------------------------------------------------------
    def start_agent(self, workdir: Path, device_id: str, broker: Any, extra: str = "") -> Any:
        """A real agent process trusting this lab's director and image repository, with a quick health check."""
        from firmware_sim.procs import start_agent

        return start_agent(
            workdir,
            device_id,
            broker_host=broker.host,
            broker_port=broker.port,
            director_keys=[self.director_key_hex],
            image_repo=(f"{self.server.url}/metadata/", self.repo.root_bytes(1)),
            extra="[health]\nlive_window = 0.2\nlatency_runs = 3\n" + extra,
        )

    def updater(
        self,
        data_dir: Path,
        *,
        arch: str = "x86_64",
        health: HealthConfig | None = None,
        store: Store | None = None,
        fetcher: Fetcher | None = None,
        image_repo: Any = None,
        vouched_max_age: float = 0.0,
        **fetch_kw: Any,
    ) -> Updater:
        """A device's updater with the real seams, or the given ones (tests of one verification layer alone).

        ``vouched_max_age`` > 0 turns the rollback fast path on (a stored bundle the last refresh listed)."""
        store = store or Store(data_dir)
        host = ModelHost()
        fetcher = fetcher or Fetcher(timeout=fetch_kw.pop("timeout", 5.0), **fetch_kw)
        client = image_repo or ImageRepoClient(
            metadata_dir=data_dir / "tuf",
            metadata_url=f"{self.server.url}/metadata/",
            bootstrap_root=self.repo.root_bytes(1),
            fetcher=fetcher,
        )
        pub = self.director._key.public_key()

        def report(kind: str, severity: str, message: str, detail: dict[str, Any]) -> None:
            self.events.append({"kind": kind, "severity": severity, "message": message, "detail": detail})

        return Updater(
            device_id="lab-dev",
            arch=arch,
            trusted={key_id(pub): pub},
            store=store,
            host=host,
            fetcher=fetcher,
            image_repo=client,
            report=report,
            on_change=lambda: None,
            health=health or HealthConfig(live_inferences=0, live_window=0.0, latency_runs=3),
            download_attempts=2,
            listing=data_dir / "tuf",
            vouched_max_age=vouched_max_age,
        )

    def kinds(self) -> list[str]:
        return [e["kind"] for e in self.events]

    def last(self, kind: str) -> dict[str, Any]:
        matching = [e for e in self.events if e["kind"] == kind]
        assert matching, f"no {kind} event; got {json.dumps(self.events)[-2000:]}"
        return matching[-1]

    def close(self) -> None:
        self.server.close()

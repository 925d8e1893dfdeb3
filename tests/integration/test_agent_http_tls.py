"""The agent's one HTTP client trusts only the controller's CA: bundles and captured samples go nowhere else."""

from __future__ import annotations

import hashlib
import ssl
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest

from agent.config import CaptureConfig, parse_config
from agent.http import ControllerHttp, from_config
from agent.ota.fetcher import DownloadError, Fetcher
from agent.telemetry.capture import CaptureSpool, Uploader
from controller.identity.pki import DeviceCA, key_pem, new_key

pytestmark = pytest.mark.integration
BODY = b"bundle bytes " * 100


class _Handler(BaseHTTPRequestHandler):
    posts: list[bytes] = []

    def do_GET(self) -> None:
        self.send_response(200)
        self.send_header("Content-Length", str(len(BODY)))
        self.end_headers()
        self.wfile.write(BODY)

    def do_POST(self) -> None:
        self.posts.append(self.rfile.read(int(self.headers["Content-Length"])))
        self.send_response(200)
        self.send_header("Content-Length", "2")
        self.end_headers()
        self.wfile.write(b"{}")

    def log_message(self, *args: object) -> None:
        pass


@pytest.fixture
def https(tmp_path: Path) -> Iterator[tuple[str, Path, Path]]:
    """An https server with a certificate from the controller's CA; yields (url, that CA, a rogue CA)."""
    ca, rogue = DeviceCA.generate(name="edgefleet API CA"), DeviceCA.generate(name="edgefleet API CA")
    key = new_key()
    (tmp_path / "srv.pem").write_bytes(ca.issue_service("_api", key, server=True, hosts=("127.0.0.1",)).pem)
    (tmp_path / "srv.key").write_bytes(key_pem(key))
    (tmp_path / "ca.pem").write_bytes(ca.cert_pem)
    (tmp_path / "rogue.pem").write_bytes(rogue.cert_pem)
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ctx.load_cert_chain(str(tmp_path / "srv.pem"), str(tmp_path / "srv.key"))
    server = ThreadingHTTPServer(("127.0.0.1", 0), _Handler)
    server.socket = ctx.wrap_socket(server.socket, server_side=True)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"https://127.0.0.1:{server.server_address[1]}", tmp_path / "ca.pem", tmp_path / "rogue.pem"
    finally:
        server.shutdown()
        server.server_close()


def test_the_client_is_pinned_to_the_configured_controller_ca(tmp_path: Path) -> None:
    cfg = parse_config(
        {"device_id": "pi-1", "data_dir": str(tmp_path), "director_public_keys": ["ab" * 32],
         "identity": {"controller_url": "https://c", "controller_ca_file": str(tmp_path / "ca.pem")}}
    )  # fmt: skip
    assert from_config(cfg).cafile == tmp_path / "ca.pem"


def test_fetcher_refuses_a_server_not_signed_by_the_controller_ca(https: tuple[str, Path, Path], tmp_path: Path) -> None:
    url, ca, rogue = https
    sha = hashlib.sha256(BODY).hexdigest()
    with pytest.raises(DownloadError, match="CERTIFICATE_VERIFY_FAILED"):
        Fetcher(http=ControllerHttp(cafile=rogue)).download(f"{url}/b", tmp_path / "x", length=len(BODY), sha256=sha)
    assert not (tmp_path / "x").exists() or (tmp_path / "x").stat().st_size == 0
    Fetcher(http=ControllerHttp(cafile=ca)).download(f"{url}/b", tmp_path / "y", length=len(BODY), sha256=sha)
    assert (tmp_path / "y").read_bytes() == BODY


def test_capture_upload_refuses_a_server_not_signed_by_the_controller_ca(https: tuple[str, Path, Path], tmp_path: Path) -> None:
    url, ca, rogue = https
    cfg = CaptureConfig(enabled=True, url=url, rate=1.0)
    spool = CaptureSpool(tmp_path / "capture.db", cfg)
    assert spool.offer({"inputs": [1.0]}, labelled=True)
    _Handler.posts.clear()
    assert Uploader(spool, cfg, "pi-1", http=ControllerHttp(cafile=rogue)).upload_once() is False
    assert spool.pending() == 1 and _Handler.posts == []  # kept for a later attempt, nothing sent
    assert Uploader(spool, cfg, "pi-1", http=ControllerHttp(cafile=ca)).upload_once() is True
    assert spool.pending() == 0 and len(_Handler.posts) == 1
    spool.close()

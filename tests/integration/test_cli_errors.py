"""The ``edgefleet`` CLI on bad input: one line on stderr, a non-zero documented exit code, never a traceback.

Against an in-process controller (real database, real broker), a local HTTP
server that answers HTML, and a port nobody listens on.
"""

from __future__ import annotations

import json
import socket
import subprocess
import sys
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest
from fastapi.testclient import TestClient
from typer.testing import CliRunner

from controller import cli
from controller.cli import common as cli_common
from tests.controller_app import ADMIN_TOKEN, running_api, settings_for

pytestmark = [pytest.mark.integration]


class _Html(BaseHTTPRequestHandler):
    def do_GET(self) -> None:
        status = 404 if "missing" in self.path else 200
        body = b"<!doctype html><html><body><h1>Welcome to nginx!</h1></body></html>"
        self.send_response(status)
        self.send_header("Content-Type", "text/html")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args: object) -> None:
        pass


@pytest.fixture(scope="module")
def html_server() -> Iterator[str]:
    srv = ThreadingHTTPServer(("127.0.0.1", 0), _Html)
    t = threading.Thread(target=srv.serve_forever, daemon=True)
    t.start()
    yield f"http://127.0.0.1:{srv.server_address[1]}"
    srv.shutdown()
    srv.server_close()


def _closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest.fixture
def api(tmp_path, mosquitto, monkeypatch):
    real_client = cli_common.client
    with running_api(settings_for(tmp_path, f"sqlite:///{tmp_path}/cli.db", mosquitto.port)) as api:

        def client(url: str, token: str):
            if url == "http://testserver":
                return TestClient(api.app, headers={"Authorization": f"Bearer {token}"})
            return real_client(url, token)

        monkeypatch.setattr(cli_common, "client", client)
        api.viewer_token = api.admin.post("/v1/tokens", json={"principal": "vic", "role": "viewer"}).json()["token"]
        api.admin.post("/v1/devices", json={"id": "pi-1"})
        yield api


def run(*args: str, token: str = ADMIN_TOKEN, url: str = "http://testserver"):
    remote = [] if args[0] == "bundle" else ["--url", url, "--token", token]  # bundle commands work offline
    r = CliRunner().invoke(cli.app, [*args, *remote], env={"COLUMNS": "250"})
    return r.exit_code, r.stdout, r.stderr


def test_bad_inputs_give_one_stderr_line_and_an_exit_code(api, tmp_path, html_server):
    garbage = tmp_path / "garbage.tar"
    garbage.write_bytes(b"this is not a tar file at all" * 40)
    bad_onnx = tmp_path / "model.onnx"
    bad_onnx.write_bytes(b"\x00\x01not a protobuf")
    txt = tmp_path / "model.txt"
    txt.write_text("hello")
    unreachable = f"http://127.0.0.1:{_closed_port()}"
    cases = [
        # (argv, expected exit code, words the line must contain)
        (("models", "push", str(tmp_path / "nope.tar")), 5, "does not exist"),
        (("models", "push", str(tmp_path)), 5, "is a directory"),
        (("models", "push", str(garbage)), 1, "invalid bundle"),
        (("bundle", "inspect", str(tmp_path / "nope.tar")), 5, "does not exist"),
        (("bundle", "inspect", str(tmp_path)), 5, "is a directory"),
        (("bundle", "inspect", str(garbage)), 5, "not a valid bundle"),
        (("bundle", "build", str(tmp_path / "nope.onnx"), "--name", "m", "--version", "1"), 5, "does not exist"),
        (("bundle", "build", str(txt), "--name", "m", "--version", "1"), 5, "expected .onnx or .tflite"),
        (("bundle", "build", str(bad_onnx), "--name", "m", "--version", "1"), 5, "cannot load this model"),
        (("bundle", "build", str(bad_onnx), "--name", "m", "--version", "1", "--features", "{oops"), 5, "not valid JSON"),
        (("models", "list", "--url", unreachable), 3, "cannot reach the controller"),
        (("models", "list", "--url", "controller.local:8000"), 2, "must start with http"),
        (("devices", "list", "--url", html_server), 3, "text/html, not JSON"),
        (("devices", "show-missing", "--url", html_server), 2, "No such command"),
        (("models", "show", "missing", "--url", html_server), 3, "without an edgefleet error body"),
        (("whoami",), 1, "EDGEFLEET_TOKEN"),  # run with an empty token below
        (("whoami",), 1, "invalid or revoked API token"),  # a wrong token below
        (("devices", "history", "no-such-device"), 1, "is not enrolled"),
        (("models", "show", "no-such-model"), 1, "no model named"),
        (("devices", "assign", "pi-1", "digits", "production"), 1, "HTTP 404"),
        (("devices", "add", "[red]pi[/red]"), 1, "[red]pi[/red]"),  # markup is printed as text
        (("devices", "update", "pi-1", "--tag", "[bold]x"), 1, "tags: Value error, invalid tag '[bold]x'"),
        (("tokens", "list"), 1, "needs the admin role"),  # as a viewer below
        (("models", "approve", "digits", "1"), 2, "Missing option '--reason'"),
        (("devices", "list", "--bogus"), 2, "No such option: --bogus"),
        (("telemetry", "digits", "--version", "x"), 2, "Invalid value for '--version'"),
    ]
    tokens = {15: "", 16: "not-a-token", 22: api.viewer_token}
    for i, (argv, code, words) in enumerate(cases):
        url = next((argv[j + 1] for j, a in enumerate(argv) if a == "--url"), "http://testserver")
        args = [a for j, a in enumerate(argv) if a != "--url" and (j == 0 or argv[j - 1] != "--url")]
        got, out, err = run(*args, token=tokens.get(i, ADMIN_TOKEN), url=url)
        where = f"case {i} {argv}: exit {got}\nstdout: {out}\nstderr: {err}"
        assert got == code, where
        assert err.count("\n") == 1 and err.startswith("edgefleet: error: "), where
        assert words in err, where
        assert "Traceback" not in out + err, where
    assert len(cases) >= 20


def test_json_errors_are_an_object_on_stdout(api):
    code, out, err = run("devices", "history", "no-such-device", "--json")
    assert code == 1 and err.startswith("edgefleet: error: ")
    e = json.loads(out)["error"]
    assert e["kind"] == "refused" and e["status"] == 404 and e["problem"]["title"] == "Not Found"
    assert e["problem"]["detail"] == "device 'no-such-device' is not enrolled" and e["problem"]["instance"].endswith(
        "no-such-device/history"
    )


def test_debug_shows_the_traceback(api):
    r = CliRunner().invoke(
        cli.app, ["devices", "history", "no-such-device", "--debug", "--url", "http://testserver", "--token", ADMIN_TOKEN]
    )
    assert r.exit_code == 1 and "Traceback" in r.stderr and r.stderr.strip().endswith("is not enrolled (HTTP 404)")


def test_real_process_unreachable_controller(tmp_path):
    """The installed entry point, as an operator runs it: no traceback, exit 3."""
    r = subprocess.run(
        [
            sys.executable,
            "-m",
            "controller.cli",
            "devices",
            "list",
            "--url",
            f"http://127.0.0.1:{_closed_port()}",
            "--token",
            "x",
        ],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert r.returncode == 3 and r.stdout == "" and r.stderr.count("\n") == 1 and "Traceback" not in r.stderr


def test_markup_in_data_is_printed_literally(api):
    api.admin.patch("/v1/devices/pi-1", json={"region": "eu"})
    code, out, _ = run("audit", "log", "--subject", "device:pi-1")
    assert code == 0 and "device.updated" in out
    from sqlmodel import Session

    from controller.core.tables import DeviceEvent

    with Session(api.app.state.engine) as s:
        s.add(DeviceEvent(device_id="pi-1", seq=1, kind="ota.rejected", severity="error", message="[bold red]bad[/] :smile:"))
        s.commit()
    code, out, _ = run("devices", "events", "pi-1")
    assert code == 0 and "[bold red]bad[/] :smile:" in out

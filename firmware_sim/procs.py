"""Run the real controller and real agents as separate processes.

Used by the demo, the e2e tests and the benchmarks, so all three exercise the
same code paths as a deployment: separate processes talking MQTT and HTTP.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import httpx

from firmware_sim.mosquitto import listening_socket

REPO = Path(__file__).resolve().parent.parent

# (python arguments, extra environment) -> (argv, environment): how to run Python somewhere else (e.g. under QEMU)
Interpreter = Callable[[list[str], dict[str, str]], tuple[list[str], dict[str, str]]]


def _env(extra: dict[str, str]) -> dict[str, str]:
    env = dict(os.environ)
    env["PYTHONPATH"] = str(REPO) + os.pathsep + env.get("PYTHONPATH", "")
    env.update(extra)
    return env


@dataclass
class Proc:
    name: str
    popen: subprocess.Popen[bytes]
    log_path: Path

    def alive(self) -> bool:
        return self.popen.poll() is None

    def kill(self) -> None:
        """SIGKILL: no clean-up, as in a power cut."""
        if self.alive():
            self.popen.send_signal(signal.SIGKILL)
            self.popen.wait()

    def stop(self, timeout: float = 10.0) -> None:
        if not self.alive():
            return
        self.popen.terminate()
        try:
            self.popen.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            self.kill()

    def log(self) -> str:
        try:
            return self.log_path.read_text(errors="replace")
        except FileNotFoundError:
            return ""


def _spawn(
    name: str,
    args: list[str],
    log_path: Path,
    env: dict[str, str],
    pass_fds: tuple[int, ...] = (),
    interpreter: Interpreter | None = None,
) -> Proc:
    log_path.parent.mkdir(parents=True, exist_ok=True)
    argv, full_env = interpreter(args, env) if interpreter is not None else ([sys.executable, *args], _env(env))
    with open(log_path, "ab") as log:
        popen = subprocess.Popen(argv, stdout=log, stderr=subprocess.STDOUT, env=full_env, cwd=REPO, pass_fds=pass_fds)
    return Proc(name, popen, log_path)


@dataclass
class ControllerProc(Proc):
    url: str = ""
    token: str = ""
    data_dir: Path = Path()

    def client(self, token: str | None = None) -> httpx.Client:
        return httpx.Client(base_url=self.url, headers={"Authorization": f"Bearer {token or self.token}"}, timeout=30)

    def approve(self, model: str, version: int, reason: str = "approved by the test harness") -> None:
        """Approve a version for production as a second principal (the admin registered it and cannot)."""
        with self.client() as admin:
            r = admin.post("/v1/tokens", json={"principal": "harness-approver", "role": "approver", "label": "procs.approve"})
            r.raise_for_status()
            token = r.json()["token"]
        with self.client(token) as approver:
            r = approver.post("/v1/approvals", json={"model": model, "version": version, "reason": reason})
            r.raise_for_status()


def start_controller(
    workdir: Path,
    *,
    broker_host: str,
    broker_port: int,
    database_url: str | None = None,
    token: str = "test-admin-token",  # noqa: S107 - local test stacks only
    timeout: float = 30.0,
    env: dict[str, str] | None = None,  # more EDGEFLEET_* settings (e.g. broker mTLS)
) -> ControllerProc:
    sock = listening_socket()  # bound here and inherited: the port cannot be taken before the controller serves
    port = int(sock.getsockname()[1])
    data_dir = workdir / "controller"
    env = {
        "EDGEFLEET_DATA_DIR": str(data_dir),
        "EDGEFLEET_DATABASE_URL": database_url or f"sqlite:///{data_dir}/controller.db",
        "EDGEFLEET_BROKER_HOST": broker_host,
        "EDGEFLEET_BROKER_PORT": str(broker_port),
        "EDGEFLEET_PUBLIC_URL": f"http://127.0.0.1:{port}",
        "EDGEFLEET_ADMIN_TOKEN": token,
        **(env or {}),
    }
    fd = sock.fileno()
    try:
        args = ["-m", "controller", "--fd", str(fd), "--log-level", "warning"]
        p = _spawn("controller", args, workdir / "controller.log", env, (fd,))
    finally:
        sock.close()
    proc = ControllerProc(p.name, p.popen, p.log_path, url=f"http://127.0.0.1:{port}", token=token, data_dir=data_dir)
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if not proc.alive():
            raise RuntimeError(f"controller exited with {proc.popen.returncode}:\n{proc.log()[-3000:]}")
        try:
            if httpx.get(f"{proc.url}/healthz", timeout=1).json().get("mqtt_connected"):
                return proc
        except httpx.HTTPError:
            pass
        time.sleep(0.1)
    proc.stop()
    raise RuntimeError(f"controller not healthy within {timeout}s:\n{proc.log()[-3000:]}")


@dataclass
class AgentProc(Proc):
    device_id: str = ""
    socket_path: Path = Path()
    data_dir: Path = Path()
    config_path: Path = Path()


def write_agent_config(
    workdir: Path,
    device_id: str,
    *,
    broker_host: str,
    broker_port: int,
    director_keys: list[str],
    extra: str = "",
    controller_url: str | None = None,
    image_repo: tuple[str, bytes] | None = None,
    development: bool = False,  # allows test hooks such as EDGEFLEET_TEST_PAUSE_AT
) -> Path:
    """Write an agent config. ``controller_url`` (or ``image_repo`` = (metadata URL, root bytes))
    pins the controller's TUF root, without which the agent installs nothing."""
    data_dir = workdir / device_id
    data_dir.mkdir(parents=True, exist_ok=True)
    cfg = data_dir / "agent.toml"
    keys = ", ".join(f'"{k}"' for k in director_keys)
    if controller_url is not None and image_repo is None:
        base = f"{controller_url.rstrip('/')}/v1/tuf/metadata/"
        r = httpx.get(f"{base}1.root.json", timeout=10)
        r.raise_for_status()
        image_repo = (base, r.content)
    if image_repo is not None:
        (data_dir / "root.json").write_bytes(image_repo[1])
        extra = f'{extra}\n[image_repository]\nurl = "{image_repo[0]}"\nroot = "{data_dir / "root.json"}"\n'
    cfg.write_text(
        f'device_id = "{device_id}"\n'
        f'data_dir = "{data_dir}"\n'
        f'socket_path = "{data_dir / "agent.sock"}"\n'
        f"director_public_keys = [{keys}]\n"
        f"development = {'true' if development else 'false'}\n"
        f"{extra}\n"
        f'[broker]\nhost = "{broker_host}"\nport = {broker_port}\nkeepalive = 10\nreconnect_min = 1\nreconnect_max = 5\n'
    )
    return cfg


def start_agent(
    workdir: Path,
    device_id: str,
    config_path: Path | None = None,
    env: dict[str, str] | None = None,
    interpreter: Interpreter | None = None,
    **cfg_kw: object,
) -> AgentProc:
    """Start ``python -m agent`` for one device; ``interpreter`` runs it elsewhere (see firmware_sim.qemu.runner)."""
    cfg = config_path or write_agent_config(workdir, device_id, **cfg_kw)  # type: ignore[arg-type]
    data_dir = cfg.parent
    p = _spawn(
        f"agent-{device_id}", ["-m", "agent", "--config", str(cfg)], data_dir / "agent.log", env or {}, interpreter=interpreter
    )
    return AgentProc(
        p.name, p.popen, p.log_path, device_id=device_id, socket_path=data_dir / "agent.sock", data_dir=data_dir, config_path=cfg
    )

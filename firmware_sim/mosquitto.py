"""A private Mosquitto on a free port with a generated config: for simulated fleets, tests, demo and benchmarks.

The configuration itself is the controller's (``controller.identity.broker_config``);
this module only runs it.
"""

from __future__ import annotations

import dataclasses
import shutil
import signal
import socket
import subprocess
import time
from pathlib import Path

import psutil

from controller.identity.broker_config import MosquittoConfig

__all__ = ["MosquittoProcess", "free_port", "listening_socket"]


def free_port() -> int:
    """A port free right now; another process may take it before it is bound (prefer ``listening_socket``)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def listening_socket(host: str = "127.0.0.1") -> socket.socket:
    """A socket bound to a port the kernel chose and listening: hand it to the server, so no one can take the port."""
    s = socket.socket()
    s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    s.bind((host, 0))
    s.listen(128)
    s.set_inheritable(True)
    return s


class _PortTaken(Exception):
    pass


class MosquittoProcess:
    """A private Mosquitto on its own port with a generated config."""

    def __init__(self, workdir: Path, config: MosquittoConfig | None = None) -> None:
        self.workdir = workdir
        workdir.mkdir(parents=True, exist_ok=True)
        self.config = config or MosquittoConfig(port=free_port())
        self.conf_path = workdir / "mosquitto.conf"
        self.log_path = workdir / "mosquitto.log"
        self.proc: subprocess.Popen[bytes] | None = None
        self._started = False  # once started, restarts keep the port

    @property
    def host(self) -> str:
        return self.config.bind

    @property
    def port(self) -> int:
        return self.config.port

    def start(self, timeout: float = 10.0) -> None:
        """Start and wait until it listens. Mosquitto cannot be handed a bound socket: if the port was
        taken between choosing and binding it, the first start retries on another free port (read
        ``port`` after starting); a restart keeps its port, as clients reconnect to it."""
        for attempt in range(5):
            try:
                self._start_once(timeout)
                self._started = True
                return
            except _PortTaken:
                if self._started or attempt == 4:
                    raise RuntimeError(f"mosquitto could not bind {self.host}:{self.port}: address in use") from None
                self.config = dataclasses.replace(self.config, port=free_port())

    def _start_once(self, timeout: float) -> None:
        exe = shutil.which("mosquitto") or "/usr/sbin/mosquitto"
        if not Path(exe).exists():
            raise RuntimeError("mosquitto not found; install it (apt-get install mosquitto) or run 'make install'")
        self.conf_path.write_text(self.config.render())
        mark = self.log_path.stat().st_size if self.log_path.exists() else 0
        with open(self.log_path, "ab") as log:
            self.proc = subprocess.Popen([exe, "-c", str(self.conf_path)], stdout=log, stderr=log)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                tail = self.log_path.read_bytes()[mark:].decode(errors="replace")
                if "Address already in use" in tail:
                    raise _PortTaken
                raise RuntimeError(f"mosquitto exited with {self.proc.returncode}: {tail[-2000:]}")
            if self._listening(self.proc.pid):  # this process, not another one on the same port
                return
            time.sleep(0.05)
        self.stop()
        raise RuntimeError(f"mosquitto did not listen on {self.host}:{self.port} within {timeout}s")

    def _listening(self, pid: int) -> bool:
        try:
            conns = psutil.Process(pid).net_connections(kind="tcp")
        except psutil.Error:
            return False
        return any(c.status == psutil.CONN_LISTEN and c.laddr and c.laddr.port == self.port for c in conns)

    def reload(self) -> None:
        """SIGHUP: Mosquitto re-reads its config, ACL file and CRL (connected clients stay)."""
        if self.proc is None or self.proc.poll() is not None:
            raise RuntimeError("mosquitto is not running")
        self.proc.send_signal(signal.SIGHUP)

    def stop(self, kill: bool = False) -> None:
        if self.proc is None or self.proc.poll() is not None:
            return
        if kill:
            self.proc.kill()
        else:
            self.proc.terminate()
        try:
            self.proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()

    def __enter__(self) -> MosquittoProcess:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

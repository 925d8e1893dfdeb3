"""A private Mosquitto on a free port with a generated config: for simulated fleets, tests, demo and benchmarks.

The configuration itself is the controller's (``controller.identity.broker_config``);
this module only runs it.
"""

from __future__ import annotations

import shutil
import signal
import socket
import subprocess
import time
from pathlib import Path

from controller.identity.broker_config import MosquittoConfig

__all__ = ["MosquittoProcess", "free_port"]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class MosquittoProcess:
    """A private Mosquitto on its own port with a generated config."""

    def __init__(self, workdir: Path, config: MosquittoConfig | None = None) -> None:
        self.workdir = workdir
        workdir.mkdir(parents=True, exist_ok=True)
        self.config = config or MosquittoConfig(port=free_port())
        self.conf_path = workdir / "mosquitto.conf"
        self.log_path = workdir / "mosquitto.log"
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def host(self) -> str:
        return self.config.bind

    @property
    def port(self) -> int:
        return self.config.port

    def start(self, timeout: float = 10.0) -> None:
        exe = shutil.which("mosquitto") or "/usr/sbin/mosquitto"
        if not Path(exe).exists():
            raise RuntimeError("mosquitto not found; install it (apt-get install mosquitto) or run 'make install'")
        self.conf_path.write_text(self.config.render())
        with open(self.log_path, "ab") as log:
            self.proc = subprocess.Popen([exe, "-c", str(self.conf_path)], stdout=log, stderr=log)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"mosquitto exited with {self.proc.returncode}: {self.log_path.read_text()[-2000:]}")
            try:
                with socket.create_connection((self.host, self.port), timeout=0.2):
                    return
            except OSError:
                time.sleep(0.05)
        self.stop()
        raise RuntimeError(f"mosquitto did not listen on {self.host}:{self.port} within {timeout}s")

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

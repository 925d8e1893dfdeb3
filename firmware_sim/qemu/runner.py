"""Run Python (and so the real agent) as an aarch64 process under qemu-user, with no binfmt and no chroot.

``qemu-aarch64-static -L ROOTFS ROOTFS/usr/bin/python3.11 ...``: the ``-L`` prefix
makes QEMU look up every path in the image first and fall back to the host's,
so the guest interpreter loads the image's libraries and wheels while the
agent's code (this checkout, on ``PYTHONPATH``) and its data directory are
ordinary host paths. The guest's environment is built from scratch: a host
virtualenv's variables or x86-64 site-packages must not leak in.

The emulated CPU is a real device's (``cortex-a72``: Raspberry Pi 4), never
QEMU's default ``max``: with ``max`` XNNPACK picks kernels for extensions that
qemu-user 7.2 emulates wrongly, and an int8 LiteRT model computes garbage (the
agent's health check catches it and rolls back).
"""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

from firmware_sim.procs import REPO, AgentProc, Interpreter, start_agent
from firmware_sim.qemu.rootfs import Recipe, RootfsError, rootfs_python

__all__ = ["QemuPython", "qemu_binary"]


def qemu_binary() -> str:
    for name in ("qemu-aarch64-static", "qemu-aarch64"):
        exe = shutil.which(name)
        if exe:
            return exe
    raise RootfsError("qemu-aarch64-static not found: install the Debian package qemu-user-static (make system-deps does)")


class QemuPython:
    """The image's Python 3 under qemu-user; usable as a ``procs.Interpreter``."""

    def __init__(self, root: Path, recipe: Recipe = Recipe(), cpu: str = "cortex-a72") -> None:
        self.root = root
        self.cpu = cpu
        self.python = rootfs_python(root, recipe)
        if not self.python.exists():
            raise RootfsError(f"no python{recipe.python} in {root}: build the image with scripts/qemu_rootfs.py")
        self.qemu = qemu_binary()

    def env(self, extra: dict[str, str] | None = None) -> dict[str, str]:
        return {
            "PATH": "/usr/local/bin:/usr/bin:/bin",
            "HOME": "/root",
            "LANG": "C.UTF-8",
            "PYTHONPATH": str(REPO),
            "PYTHONUNBUFFERED": "1",
            **(extra or {}),
        }

    def argv(self, args: list[str]) -> list[str]:
        return [self.qemu, "-cpu", self.cpu, "-L", str(self.root), str(self.python), *args]

    def __call__(self, args: list[str], env: dict[str, str]) -> tuple[list[str], dict[str, str]]:
        return self.argv(args), self.env(env)

    def run(self, args: list[str], timeout: float = 300.0, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
        """Run ``python ARGS`` in the guest to completion (e.g. ``-m agent --enrol TOKEN``)."""
        return subprocess.run(
            self.argv(args), env=self.env(env), cwd=REPO, capture_output=True, text=True, timeout=timeout, check=False
        )

    def start_agent(self, workdir: Path, device_id: str, **kw: object) -> AgentProc:
        interp: Interpreter = self
        return start_agent(workdir, device_id, interpreter=interp, **kw)  # type: ignore[arg-type]

"""Build and cache an arm64 Debian root file system with the agent's aarch64 wheels.

No binfmt and no chroot: ``debootstrap --foreign`` downloads the packages of a
minimal Debian with ``python3`` and unpacks the essential ones; every other
downloaded package is then unpacked with ``dpkg-deb`` (maintainer scripts are
not run: nothing in the agent needs them). The agent's Python dependencies are
aarch64 wheels (``pip download --platform ... --only-binary=:all:``) installed
into the image's ``/usr/local/lib/python3.X/dist-packages``.

The result lives in a cache directory outside the repository (default
``~/.cache/edgefleet/qemu``, or ``$EDGEFLEET_QEMU_CACHE``), keyed by a hash of
the recipe, built under a file lock so concurrent test runs share one build.
"""

from __future__ import annotations

import fcntl
import hashlib
import json
import os
import re
import shutil
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from pathlib import Path

__all__ = ["Recipe", "RootfsError", "apt_mirror", "build", "cache_dir", "ensure_rootfs", "rootfs_python"]

# Pinned to what runs under qemu-user 7.2 (Debian bookworm's): onnxruntime 1.32's aarch64 wheel dies at
# import and ai-edge-litert 2.2/2.3 segfault when an Interpreter is made; onnxruntime 1.22.0 and
# ai-edge-litert 2.1.6 work. Real arm64 hardware runs the current releases.
AGENT_WHEELS = (
    "numpy>=1.24,<2.3",
    "onnxruntime==1.22.0",
    "ai-edge-litert==2.1.6",
    "paho-mqtt>=2.1,<3",
    "cryptography>=42",
    "psutil>=5.9",
    "tuf>=5.0",
    "msgspec>=0.18",  # the agent config schema
)
# glibc of bookworm is 2.36: wheels tagged up to manylinux_2_36 run there.
PLATFORMS = ("manylinux2014_aarch64", *(f"manylinux_2_{m}_aarch64" for m in range(17, 37)), "linux_aarch64")


class RootfsError(RuntimeError):
    """The root file system could not be built; the message says which step and why."""


@dataclass(frozen=True, kw_only=True)
class Recipe:
    suite: str = "bookworm"
    arch: str = "arm64"
    python: str = "3.11"  # bookworm's python3; the wheels are chosen for it
    packages: tuple[str, ...] = ("python3", "ca-certificates", "libgomp1")
    wheels: tuple[str, ...] = AGENT_WHEELS
    mirror: str = field(default="", compare=False)  # read from the machine's apt sources when empty

    def key(self) -> str:
        d = asdict(self)
        d.pop("mirror")
        return hashlib.sha256(json.dumps(d, sort_keys=True).encode()).hexdigest()[:16]


def cache_dir() -> Path:
    env = os.environ.get("EDGEFLEET_QEMU_CACHE")
    return Path(env) if env else Path.home() / ".cache" / "edgefleet" / "qemu"


def apt_mirror(suite: str, sources: Path = Path("/etc/apt")) -> str:
    """The Debian mirror this machine's apt uses for ``suite`` (deb822 ``*.sources`` or one-line ``*.list``)."""
    files = [*sorted((sources / "sources.list.d").glob("*.sources")), sources / "sources.list"]
    files += sorted((sources / "sources.list.d").glob("*.list"))
    for f in files:
        if not f.is_file():
            continue
        text = f.read_text(errors="replace")
        for stanza in re.split(r"\n\s*\n", text):
            fields = dict(re.findall(r"^([A-Za-z-]+):\s*(.*)$", stanza, flags=re.M))
            if "deb" in fields.get("Types", "").split() and suite in fields.get("Suites", "").split():
                return str(fields["URIs"].split()[0])
        for line in text.splitlines():
            m = re.match(r"\s*deb\s+(?:\[[^]]*\]\s+)?(\S+)\s+(\S+)", line)
            if m and m.group(2) == suite:
                return m.group(1)
    raise RootfsError(f"no apt source for suite {suite!r} in {sources}/sources.list or sources.list.d; pass a mirror")


def rootfs_python(root: Path, recipe: Recipe = Recipe()) -> Path:
    """The guest interpreter's path inside ``root`` (as a host path)."""
    return root / "usr" / "bin" / f"python{recipe.python}"


def _run(step: str, cmd: list[str], log: Path, **kw: object) -> None:
    with open(log, "ab") as out:
        out.write(f"\n$ {' '.join(cmd)}\n".encode())
        out.flush()
        r = subprocess.run(cmd, stdout=out, stderr=subprocess.STDOUT, check=False, **kw)  # type: ignore[call-overload]
    if r.returncode != 0:
        tail = log.read_text(errors="replace")[-3000:]
        raise RootfsError(f"{step} failed (exit {r.returncode}); log {log}:\n{tail}")


def _need(tool: str, package: str) -> str:
    exe = shutil.which(tool) or next((p for p in (f"/usr/sbin/{tool}", f"/usr/bin/{tool}") if Path(p).exists()), None)
    if exe is None:
        raise RootfsError(f"{tool} not found: install the Debian package {package} (make system-deps does)")
    return exe


@contextmanager
def _locked(path: Path) -> Iterator[None]:
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w") as f:
        fcntl.flock(f, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(f, fcntl.LOCK_UN)


def _unpack_debs(root: Path, log: Path) -> int:
    """Unpack every downloaded package into ``root``, keeping the merged-/usr directory symlinks."""
    debs = sorted((root / "var" / "cache" / "apt" / "archives").glob("*.deb"))
    if not debs:
        raise RootfsError(f"debootstrap left no packages in {root}/var/cache/apt/archives")
    for deb in debs:
        cmd = f"dpkg-deb --fsys-tarfile '{deb}' | tar -x --keep-directory-symlink -C '{root}'"
        _run(f"unpacking {deb.name}", ["bash", "-o", "pipefail", "-c", cmd], log)
    return len(debs)


def _wheels(recipe: Recipe, dest: Path, log: Path) -> None:
    """Download the aarch64 wheels (cached beside the root file systems: a rebuild of the image reuses them)."""
    dest.mkdir(parents=True, exist_ok=True)
    plats = [a for p in PLATFORMS for a in ("--platform", p)]
    target = ["--python-version", recipe.python, "--implementation", "cp", "--only-binary=:all:"]
    cmd = [sys.executable, "-m", "pip", "download", "-q", "-d", str(dest), *plats, *target, *recipe.wheels]
    _run("pip download (aarch64 wheels)", cmd, log)


def _install_wheels(recipe: Recipe, root: Path, wheels: Path, log: Path) -> None:
    site = root / "usr" / "local" / "lib" / f"python{recipe.python}" / "dist-packages"
    plats = [a for p in PLATFORMS for a in ("--platform", p)]
    target = ["--python-version", recipe.python, "--implementation", "cp", "--only-binary=:all:"]
    cmd = [sys.executable, "-m", "pip", "install", "-q", "--no-index", "--find-links", str(wheels), "--target", str(site)]
    _run("pip install into the image", [*cmd, *plats, *target, "--no-compile", *recipe.wheels], log)


def build(recipe: Recipe, dest: Path, log: Path) -> dict[str, float]:
    """Build the image into ``dest`` (replaced). Returns the seconds each step took."""
    debootstrap = _need("debootstrap", "debootstrap")
    _need("dpkg-deb", "dpkg")
    mirror = recipe.mirror or apt_mirror(recipe.suite)
    work = dest.with_name(dest.name + ".partial")
    shutil.rmtree(work, ignore_errors=True)
    times: dict[str, float] = {}
    t = time.monotonic()
    cmd = [debootstrap, "--foreign", f"--arch={recipe.arch}", "--variant=minbase", f"--include={','.join(recipe.packages)}"]
    _run("debootstrap --foreign", [*cmd, recipe.suite, str(work), mirror], log)
    times["debootstrap_s"] = time.monotonic() - t
    t = time.monotonic()
    count = _unpack_debs(work, log)
    shutil.rmtree(work / "var" / "cache" / "apt" / "archives", ignore_errors=True)
    times["unpack_s"] = time.monotonic() - t
    times["packages"] = count
    if not rootfs_python(work, recipe).exists():
        raise RootfsError(f"python{recipe.python} is not in the image: is it bookworm's python3? ({work})")
    t = time.monotonic()
    wheels = dest.parent / "wheels" / recipe.key()
    _wheels(recipe, wheels, log)
    _install_wheels(recipe, work, wheels, log)
    times["wheels_s"] = time.monotonic() - t
    (work / "etc" / "edgefleet-image.json").write_text(json.dumps({"recipe": asdict(recipe), "mirror": mirror, **times}))
    shutil.rmtree(dest, ignore_errors=True)
    work.rename(dest)
    return times


def ensure_rootfs(recipe: Recipe = Recipe(), cache: Path | None = None, quiet: bool = True) -> Path:
    """The cached image for ``recipe``, built first if missing (one builder at a time; others wait)."""
    base = cache or cache_dir()
    root = base / f"rootfs-{recipe.suite}-{recipe.arch}-{recipe.key()}"
    stamp = root / "etc" / "edgefleet-image.json"
    if stamp.exists():
        return root
    with _locked(base / "build.lock"):
        if stamp.exists():  # another process built it while we waited
            return root
        log = base / f"build-{recipe.key()}.log"
        log.write_text("")
        if not quiet:
            print(f"building the arm64 root file system in {root} (log {log})", flush=True)
        times = build(recipe, root, log)
        for old in base.glob(f"rootfs-{recipe.suite}-{recipe.arch}-*"):  # images of older recipes
            if old != root:
                shutil.rmtree(old, ignore_errors=True)
        if not quiet:
            print(f"built in {sum(v for k, v in times.items() if k.endswith('_s')):.0f} s: {times}", flush=True)
    return root

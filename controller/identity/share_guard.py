"""The share guard: a small Mosquitto plugin (``share_guard.c``) that refuses ``$share/...`` SUBSCRIBEs.

Mosquitto 2.0's ACL file grants every SUBSCRIBE and checks read access per
delivered message, so a device that joined the controllers' shared
subscription would be handed, and the broker would drop, a share of every
device's messages. The plugin refuses such a SUBSCRIBE (SUBACK 0x87, or 0x80
in MQTT 3.1.1) for every client whose certificate CN is not a controller
replica's, with no per-device state; everything else it leaves to the ACL file.

The broker loads C, so the plugin is compiled from source against the
Debian ``mosquitto-dev`` and ``libmosquitto-dev`` headers (``make install``
installs them), once per source version into a cache, and copied next to the
broker's other files.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import subprocess
import tempfile
from pathlib import Path

SOURCE = Path(__file__).with_name("share_guard.c")
NEEDS = "a C compiler and the Mosquitto plugin headers (apt-get install gcc mosquitto-dev libmosquitto-dev)"
_CFLAGS = ("-std=c99", "-D_POSIX_C_SOURCE=200809L", "-O2", "-Wall", "-fPIC", "-shared")


class ShareGuardBuildError(RuntimeError):
    """The plugin could not be compiled here."""


def _cache_dir() -> Path:
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base) / "edgefleet" / "mosquitto"


def compiled() -> Path:
    """The plugin built from the current source (compiled once per source version, then cached)."""
    source = SOURCE.read_bytes()
    digest = hashlib.sha256(source + " ".join(_CFLAGS).encode()).hexdigest()[:16]
    cache = _cache_dir()
    built = cache / f"share_guard-{digest}.so"
    if built.exists():
        return built
    cc = os.environ.get("CC", "cc")
    if shutil.which(cc) is None:
        raise ShareGuardBuildError(f"cannot build the broker's share guard plugin: no C compiler ({cc!r}); needs {NEEDS}")
    try:
        cache.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=cache, suffix=".so.tmp")
        os.close(fd)
    except OSError as exc:
        raise ShareGuardBuildError(f"cannot build the broker's share guard plugin: {cache} is not writable ({exc})") from None
    try:
        run = subprocess.run([cc, *_CFLAGS, "-o", tmp, str(SOURCE)], capture_output=True, text=True, timeout=120)
        if run.returncode != 0:
            detail = " | ".join(run.stderr.strip().splitlines()[:3])
            raise ShareGuardBuildError(
                f"cannot build the broker's share guard plugin ({cc} exited with {run.returncode}: {detail}); needs {NEEDS}"
            )
        os.replace(tmp, built)  # concurrent builds write the same bytes: the last rename wins
    except (OSError, subprocess.TimeoutExpired) as exc:
        raise ShareGuardBuildError(f"cannot build the broker's share guard plugin ({cc}: {exc}); needs {NEEDS}") from None
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)
    return built


def install(dest: Path) -> Path:
    """Copy the compiled plugin to ``dest`` (readable by the broker's user) and return ``dest``."""
    dest.parent.mkdir(parents=True, exist_ok=True)
    tmp = dest.with_name(dest.name + ".tmp")
    shutil.copyfile(compiled(), tmp)
    tmp.chmod(0o755)
    os.replace(tmp, dest)
    return dest

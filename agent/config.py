"""Agent configuration: a TOML file read into a keyword-only dataclass.

Errors name the file, the key, what was expected and what came, so that
``edgefleet-agent --check-config`` is useful on a device.
"""

from __future__ import annotations

import platform
import sys
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from shared.errors import ProtocolError
from shared.topics import validate_device_id

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover - Python 3.10 on Jetson
    import tomli as tomllib


class ConfigError(Exception):
    """The agent configuration is invalid; the message says how to fix it."""


@dataclass(frozen=True, kw_only=True)
class BrokerConfig:
    host: str = "127.0.0.1"
    port: int = 1883
    keepalive: int = 30  # seconds
    reconnect_min: float = 1.0  # seconds
    reconnect_max: float = 120.0  # seconds
    # mTLS (issue 6): set cert_file to connect over TLS with the device certificate
    ca_file: Path | None = None  # the device CA; the broker's certificate must chain to it
    cert_file: Path | None = None  # this device's client certificate (CN = device_id)
    key_file: Path | None = None  # its private key, mode 0600

    @property
    def tls(self) -> bool:
        return self.cert_file is not None


@dataclass(frozen=True, kw_only=True)
class IdentityConfig:
    """Where the device keeps its key and certificate, and whom it asks to renew it (agent/identity.py)."""

    directory: Path
    controller_url: str = ""  # empty: no automatic renewal
    controller_ca_file: Path | None = None  # trust for an https controller_url (default: system store)
    renew_before_days: float = 10.0


@dataclass(frozen=True, kw_only=True)
class AgentConfig:
    device_id: str
    data_dir: Path
    socket_path: Path
    director_public_keys: tuple[str, ...]  # hex Ed25519 keys trusted for desired state
    broker: BrokerConfig = field(default_factory=BrokerConfig)
    identity: IdentityConfig | None = None
    arch: str = field(default_factory=platform.machine)
    download_timeout: float = 30.0  # seconds without progress before giving up
    inference_threads: int = 1
    log_level: str = "INFO"


def _get(table: dict[str, Any], key: str, typ: type | tuple[type, ...], where: str, default: Any = ...) -> Any:
    if key not in table:
        if default is ...:
            raise ConfigError(f"{where}: missing required key {key!r}")
        return default
    value = table[key]
    if not isinstance(value, typ) or (isinstance(value, bool) and typ is not bool):
        names = typ.__name__ if isinstance(typ, type) else " or ".join(t.__name__ for t in typ)
        raise ConfigError(f"{where}: {key!r} must be {names}, got {type(value).__name__} {value!r}")
    return value


def parse_config(data: dict[str, Any], where: str = "config") -> AgentConfig:
    device_id = _get(data, "device_id", str, where)
    try:
        validate_device_id(device_id)
    except ProtocolError as exc:
        raise ConfigError(f"{where}: {exc}") from None
    keys = _get(data, "director_public_keys", list, where)
    if not keys or not all(isinstance(k, str) and len(k) == 64 for k in keys):
        raise ConfigError(f"{where}: 'director_public_keys' must be a non-empty list of 64-hex-character Ed25519 keys")
    b = _get(data, "broker", dict, where, {})
    bw = f"{where} [broker]"
    broker = BrokerConfig(
        host=_get(b, "host", str, bw, "127.0.0.1"),
        port=_get(b, "port", int, bw, 1883),
        keepalive=_get(b, "keepalive", int, bw, 30),
        reconnect_min=float(_get(b, "reconnect_min", (int, float), bw, 1.0)),
        reconnect_max=float(_get(b, "reconnect_max", (int, float), bw, 120.0)),
        **_tls_paths(b, bw),
    )
    data_dir = Path(_get(data, "data_dir", str, where))
    identity = _identity(data, where, data_dir)
    if identity is not None and not broker.tls:
        d = identity.directory
        broker = replace(broker, ca_file=d / "ca.pem", cert_file=d / "device.pem", key_file=d / "device.key")
    return AgentConfig(
        device_id=device_id,
        data_dir=data_dir,
        socket_path=Path(_get(data, "socket_path", str, where, str(data_dir / "agent.sock"))),
        director_public_keys=tuple(keys),
        broker=broker,
        identity=identity,
        arch=_get(data, "arch", str, where, platform.machine()),
        download_timeout=float(_get(data, "download_timeout", (int, float), where, 30.0)),
        inference_threads=_get(data, "inference_threads", int, where, 1),
        log_level=_get(data, "log_level", str, where, "INFO").upper(),
    )


def _tls_paths(b: dict[str, Any], where: str) -> dict[str, Path | None]:
    paths = {k: Path(_get(b, k, str, where)) if k in b else None for k in ("ca_file", "cert_file", "key_file")}
    if any(paths.values()) and not all(paths.values()):
        raise ConfigError(f"{where}: TLS needs all of 'ca_file', 'cert_file' and 'key_file', or none")
    return paths


def _identity(data: dict[str, Any], where: str, data_dir: Path) -> IdentityConfig | None:
    if "identity" not in data:
        return None
    t = _get(data, "identity", dict, where)
    iw = f"{where} [identity]"
    ca = _get(t, "controller_ca_file", str, iw, "")
    return IdentityConfig(
        directory=Path(_get(t, "directory", str, iw, str(data_dir / "identity"))),
        controller_url=_get(t, "controller_url", str, iw, ""),
        controller_ca_file=Path(ca) if ca else None,
        renew_before_days=float(_get(t, "renew_before_days", (int, float), iw, 10.0)),
    )


def load_config(path: Path) -> AgentConfig:
    try:
        with open(path, "rb") as f:
            data = tomllib.load(f)
    except OSError as exc:
        raise ConfigError(f"cannot read config {path}: {exc.strerror}") from None
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"{path}: invalid TOML: {exc}") from None
    return parse_config(data, str(path))

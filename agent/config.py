"""Agent configuration: a TOML file read into a keyword-only dataclass.

Errors name the file, the key, what was expected and what came, so that
``edgefleet-agent --check-config`` is useful on a device.
"""

from __future__ import annotations

import json
import platform
import sys
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, TypeVar

from shared.errors import ProtocolError
from shared.topics import validate_device_id

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover - Python 3.10 on Jetson
    import tomli as tomllib


_N = TypeVar("_N", int, float)


class ConfigError(Exception):
    """The agent configuration is invalid; the message says how to fix it."""


@dataclass(frozen=True, kw_only=True)
class BrokerConfig:
    host: str = "127.0.0.1"
    port: int = 1883
    keepalive: int = 30  # seconds
    reconnect_min: float = 1.0  # seconds
    reconnect_max: float = 120.0  # seconds
    reconnect_jitter: bool = True  # full jitter on the backoff; off only to show why it exists
    # mTLS: set cert_file to connect over TLS with the device certificate
    ca_file: Path | None = None  # the device CA; the broker's certificate must chain to it
    cert_file: Path | None = None  # this device's client certificate (CN = device_id)
    key_file: Path | None = None  # its private key, mode 0600

    @property
    def tls(self) -> bool:
        return self.cert_file is not None


@dataclass(frozen=True, kw_only=True)
class TelemetryConfig:
    window_s: float = 60.0  # seconds per telemetry window
    queue_max_windows: int = 10_080  # unsent windows kept on disk (7 days at 60 s); oldest dropped beyond
    max_inflight: int = 20  # windows published and not yet acknowledged by the broker
    system_metrics: bool = True  # psutil CPU, memory, disk, temperature
    prediction_log_max: int = 100_000  # predictions whose context is kept on disk for late labels (~10 MB)


@dataclass(frozen=True, kw_only=True)
class CaptureConfig:
    enabled: bool = False  # data capture is off unless the operator turns it on
    url: str = ""  # controller base URL, e.g. https://controller.example; uploads go to {url}/v1/capture/{device_id}
    rate: float = 0.01  # fraction of inferences whose inputs are sampled (labelled ones are always candidates)
    max_bytes_per_day: int = 1024 * 1024  # bytes of samples captured per UTC day
    unlabelled_share: float = 0.5  # at most this share of the daily budget goes to unlabelled samples
    spool_max_bytes: int = 8 * 1024 * 1024  # bytes waiting on disk for upload; unlabelled evicted first
    upload_interval_s: float = 60.0  # seconds between upload attempts
    batch_max_bytes: int = 256 * 1024  # bytes per upload request


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
    telemetry: TelemetryConfig = field(default_factory=TelemetryConfig)
    capture: CaptureConfig = field(default_factory=CaptureConfig)
    identity: IdentityConfig | None = None
    arch: str = field(default_factory=platform.machine)
    download_timeout: float = 30.0  # seconds without progress before giving up
    inference_threads: int = 1
    log_level: str = "INFO"
    log_format: str = "text"  # text | json (one object per line); no own timestamp under journald either way
    http_port: int | None = None  # local HTTP API on 127.0.0.1; None: Unix socket only
    image_repo: ImageRepoConfig | None = None  # without it no bundle can be verified, so none is installed
    download: DownloadConfig = field(default_factory=lambda: DownloadConfig())
    health: HealthConfig = field(default_factory=lambda: HealthConfig())
    development: bool = False  # a test or development device: test hooks may be armed (never on a fleet device)


@dataclass(frozen=True, kw_only=True)
class ImageRepoConfig:
    url: str  # base URL of the TUF metadata, e.g. https://controller/v1/tuf/metadata/
    root: Path  # the root metadata pinned at provisioning (TUF bootstrap)


@dataclass(frozen=True, kw_only=True)
class DownloadConfig:
    min_speed: float = 1024.0  # bytes per second, average, after the grace period
    grace: float = 3.0  # seconds before the speed check applies
    attempts: int = 3  # tries per bundle, resuming with HTTP Range


@dataclass(frozen=True, kw_only=True)
class HealthConfig:
    """How a candidate model is health-checked before commit ([health] table; the one definition)."""

    live_inferences: int = 20  # live inferences without error that confirm a candidate
    live_window: float = 30.0  # seconds; with fewer live inferences and no error, commit at the end
    latency_runs: int = 20  # golden-vector runs whose median is held to the bundle's latency budget


_DOWNLOAD, _HEALTH = DownloadConfig(), HealthConfig()  # defaults for keys a config file leaves out


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
    bd = BrokerConfig()
    broker = BrokerConfig(
        host=_get(b, "host", str, bw, bd.host),
        port=_get(b, "port", int, bw, bd.port),
        keepalive=_get(b, "keepalive", int, bw, bd.keepalive),
        reconnect_min=float(_get(b, "reconnect_min", (int, float), bw, bd.reconnect_min)),
        reconnect_max=float(_get(b, "reconnect_max", (int, float), bw, bd.reconnect_max)),
        reconnect_jitter=_get(b, "reconnect_jitter", bool, bw, bd.reconnect_jitter),
        **_tls_paths(b, bw),
    )
    telemetry = _telemetry(_get(data, "telemetry", dict, where, {}), f"{where} [telemetry]")
    capture = _capture(_get(data, "capture", dict, where, {}), f"{where} [capture]")
    data_dir = Path(_get(data, "data_dir", str, where))
    image_repo = None
    ir = _get(data, "image_repository", dict, where, None)
    if ir is not None:
        iw = f"{where} [image_repository]"
        url = _get(ir, "url", str, iw)
        if not url.startswith(("http://", "https://")):
            raise ConfigError(f"{iw}: 'url' must start with http:// or https://, got {url!r}")
        root = Path(_get(ir, "root", str, iw))
        _check_root(root, iw)
        image_repo = ImageRepoConfig(url=url, root=root)
    dl = _get(data, "download", dict, where, {})
    dw = f"{where} [download]"
    hc = _get(data, "health", dict, where, {})
    hw = f"{where} [health]"
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
        telemetry=telemetry,
        capture=capture,
        identity=identity,
        arch=_get(data, "arch", str, where, platform.machine()),
        download_timeout=float(_get(data, "download_timeout", (int, float), where, 30.0)),
        inference_threads=_get(data, "inference_threads", int, where, 1),
        log_level=_get(data, "log_level", str, where, "INFO").upper(),
        log_format=_choice(_get(data, "log_format", str, where, "text"), ("text", "json"), "log_format", where),
        http_port=_get(data, "http_port", int, where, None),
        development=_get(data, "development", bool, where, False),
        image_repo=image_repo,
        download=DownloadConfig(
            min_speed=float(_get(dl, "min_speed", (int, float), dw, _DOWNLOAD.min_speed)),
            grace=float(_get(dl, "grace", (int, float), dw, _DOWNLOAD.grace)),
            attempts=_positive(_get(dl, "attempts", int, dw, _DOWNLOAD.attempts), "attempts", dw),
        ),
        health=HealthConfig(
            live_inferences=_get(hc, "live_inferences", int, hw, _HEALTH.live_inferences),
            live_window=float(_get(hc, "live_window", (int, float), hw, _HEALTH.live_window)),
            latency_runs=_positive(_get(hc, "latency_runs", int, hw, _HEALTH.latency_runs), "latency_runs", hw),
        ),
    )


def _choice(value: str, choices: tuple[str, ...], key: str, where: str) -> str:
    if value not in choices:
        raise ConfigError(f"{where}: {key!r} must be one of {', '.join(choices)}, got {value!r}")
    return value


def _positive(value: _N, key: str, where: str) -> _N:
    if value <= 0:
        raise ConfigError(f"{where}: {key!r} must be > 0, got {value!r}")
    return value


def _check_root(path: Path, where: str) -> None:
    """The pinned TUF root must be readable JSON metadata of type root."""
    try:
        data = json.loads(path.read_bytes())
    except OSError as exc:
        raise ConfigError(f"{where}: cannot read root metadata {path}: {exc.strerror}") from None
    except ValueError as exc:
        raise ConfigError(f"{where}: root metadata {path} is not JSON: {exc}") from None
    kind = data.get("signed", {}).get("_type") if isinstance(data, dict) else None
    if kind != "root":
        raise ConfigError(f"{where}: {path} must be TUF root metadata (signed._type 'root'), got {kind!r}")


def _telemetry(t: dict[str, Any], where: str) -> TelemetryConfig:
    d = TelemetryConfig()
    return TelemetryConfig(
        window_s=_positive(float(_get(t, "window_s", (int, float), where, d.window_s)), "window_s", where),
        queue_max_windows=(_positive(_get(t, "queue_max_windows", int, where, d.queue_max_windows), "queue_max_windows", where)),
        max_inflight=_positive(_get(t, "max_inflight", int, where, d.max_inflight), "max_inflight", where),
        prediction_log_max=_positive(
            _get(t, "prediction_log_max", int, where, d.prediction_log_max), "prediction_log_max", where
        ),
        system_metrics=_get(t, "system_metrics", bool, where, d.system_metrics),
    )


def _capture(c: dict[str, Any], where: str) -> CaptureConfig:
    d = CaptureConfig()
    cfg = CaptureConfig(
        enabled=_get(c, "enabled", bool, where, d.enabled),
        url=_get(c, "url", str, where, d.url).rstrip("/"),
        rate=float(_get(c, "rate", (int, float), where, d.rate)),
        max_bytes_per_day=_get(c, "max_bytes_per_day", int, where, d.max_bytes_per_day),
        unlabelled_share=float(_get(c, "unlabelled_share", (int, float), where, d.unlabelled_share)),
        spool_max_bytes=_get(c, "spool_max_bytes", int, where, d.spool_max_bytes),
        upload_interval_s=_positive(
            float(_get(c, "upload_interval_s", (int, float), where, d.upload_interval_s)), "upload_interval_s", where
        ),
        batch_max_bytes=_positive(_get(c, "batch_max_bytes", int, where, d.batch_max_bytes), "batch_max_bytes", where),
    )
    if not 0.0 <= cfg.rate <= 1.0 or not 0.0 <= cfg.unlabelled_share <= 1.0:
        raise ConfigError(
            f"{where}: 'rate' and 'unlabelled_share' must be between 0 and 1, got {cfg.rate} and {cfg.unlabelled_share}"
        )
    if cfg.enabled and not cfg.url.startswith(("http://", "https://")):
        raise ConfigError(f"{where}: capture is enabled but 'url' is {cfg.url!r}; expected the controller's http(s) base URL")
    return cfg


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

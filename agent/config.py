"""Agent configuration: a TOML file read into frozen msgspec Structs (the schema is the classes below).

Unknown keys (typos) are refused, as are values out of range (ports, sizes,
log levels); every error names the file, the table and the key, so a config
that passes ``edgefleet-agent --check-config`` starts. Derived defaults (the
socket path, the identity directory, broker TLS from an identity) are filled
in ``AgentConfig.__post_init__``.
"""

from __future__ import annotations

import json
import platform
import re
import sys
from pathlib import Path
from typing import Annotated, Any, Literal

import msgspec
from msgspec import Meta, Struct, field
from msgspec.structs import force_setattr

from shared.errors import ProtocolError
from shared.topics import validate_device_id

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover - Python 3.10 on Jetson
    import tomli as tomllib


class ConfigError(Exception):
    """The agent configuration is invalid; the message says how to fix it."""


Port = Annotated[int, Meta(ge=1, le=65535)]
LocalPort = Annotated[int, Meta(ge=0, le=65535)]  # 0: any free port
PosInt = Annotated[int, Meta(ge=1)]
PosFloat = Annotated[float, Meta(gt=0)]
NonNegFloat = Annotated[float, Meta(ge=0)]
NonNegInt = Annotated[int, Meta(ge=0)]
Fraction = Annotated[float, Meta(ge=0, le=1)]
HttpUrl = Annotated[str, Meta(pattern=r"^https?://")]
LogFormat = Literal["text", "json"]
LogLevel = Literal["DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL", "debug", "info", "warning", "error", "critical"]
UNSET = Path("")  # a path left out: derived from data_dir in AgentConfig.__post_init__


class BrokerConfig(Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    host: str = "127.0.0.1"
    port: Port = 1883
    keepalive: PosInt = 240  # seconds of quiet before a ping; the broker's Last Will says offline after 1.5x (ADR 0076)
    reconnect_min: PosFloat = 1.0  # seconds
    reconnect_max: PosFloat = 120.0  # seconds
    reconnect_jitter: bool = True  # full jitter on the backoff; off only to show why it exists
    # mTLS: set cert_file to connect over TLS with the device certificate
    ca_file: Path | None = None  # the device CA; the broker's certificate must chain to it
    cert_file: Path | None = None  # this device's client certificate (CN = device_id)
    key_file: Path | None = None  # its private key, mode 0600

    def __post_init__(self) -> None:
        paths = (self.ca_file, self.cert_file, self.key_file)
        if any(paths) and not all(paths):
            raise ValueError("TLS needs all of 'ca_file', 'cert_file' and 'key_file', or none")
        if self.reconnect_max < self.reconnect_min:
            raise ValueError(f"'reconnect_max' ({self.reconnect_max}) is below 'reconnect_min' ({self.reconnect_min})")

    @property
    def tls(self) -> bool:
        return self.cert_file is not None


class TelemetryConfig(Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    window_s: PosFloat = 60.0  # seconds per telemetry window
    queue_max_windows: PosInt = 10_080  # unsent windows kept on disk (7 days at 60 s); oldest dropped beyond
    queue_max_events: PosInt = 1_000  # unsent device events kept on disk (ADR 0078); oldest dropped beyond
    max_inflight: PosInt = 20  # windows and events sent and not yet acknowledged by the controller
    ack_timeout_s: PosFloat = 30.0  # seconds a sent window waits for the controller's ack before it is sent again
    controller_acks: bool = True  # keep windows until the controller acks them (false: the broker's PUBACK is enough)
    windows_per_publish: PosInt = 10  # windows per telemetry message at most (1: each window at once, as when fresh)
    batch_wait_s: NonNegFloat = 0.0  # seconds a message that is not full waits for more (0: windows_per_publish x window_s)
    prediction_log_max: PosInt = 100_000  # predictions whose context is kept on disk for late labels (~10 MB)
    system_metrics: bool = True  # CPU, memory, disk, temperature gauges (/proc and /sys on Linux, psutil elsewhere)


class CaptureConfig(Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    enabled: bool = False  # data capture is off unless the operator turns it on
    url: str = ""  # controller base URL, e.g. https://controller.example; uploads go to {url}/v1/capture/{device_id}
    rate: Fraction = 0.01  # fraction of inferences whose inputs are sampled (labelled ones are always candidates)
    max_bytes_per_day: NonNegInt = 1024 * 1024  # bytes of samples captured per UTC day
    unlabelled_share: Fraction = 0.5  # at most this share of the daily budget goes to unlabelled samples
    spool_max_bytes: NonNegInt = 8 * 1024 * 1024  # bytes waiting on disk for upload; unlabelled evicted first
    upload_interval_s: PosFloat = 60.0  # seconds between upload attempts
    batch_max_bytes: PosInt = 256 * 1024  # bytes per upload request

    def __post_init__(self) -> None:
        force_setattr(self, "url", self.url.rstrip("/"))
        if self.enabled and not self.url.startswith(("http://", "https://")):
            raise ValueError(f"capture is enabled but 'url' is {self.url!r}; expected the controller's http(s) base URL")


class IdentityConfig(Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    """Where the device keeps its key and certificate, and whom it asks to renew it (agent/identity.py)."""

    directory: Path = UNSET  # default <data_dir>/identity
    controller_url: str = ""  # empty: no automatic renewal
    controller_ca_file: Path | None = None  # trust for an https controller_url (default: system store)
    renew_before_days: PosFloat = 10.0

    def __post_init__(self) -> None:
        if self.controller_ca_file == UNSET:  # controller_ca_file = "": the system store
            force_setattr(self, "controller_ca_file", None)


class ImageRepoConfig(Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    url: HttpUrl  # base URL of the TUF metadata, e.g. https://controller/v1/tuf/metadata/
    root: Path  # the root metadata pinned at provisioning (TUF bootstrap)

    def __post_init__(self) -> None:
        _check_root(self.root)


class DownloadConfig(Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    min_speed: NonNegFloat = 1024.0  # bytes per second, average, after the grace period
    grace: NonNegFloat = 3.0  # seconds before the speed check applies
    attempts: PosInt = 3  # tries per bundle within one update, resuming with HTTP Range
    retry_base_s: PosFloat = 5.0  # a failed update is tried again after a jittered delay of up to this, doubling...
    retry_max_s: PosFloat = 3600.0  # ...to at most this (seconds)
    metadata_poll_s: PosFloat = 600.0  # while an assignment is refused, look for new release metadata this often
    # A bundle still on the device (the model a role ran before: a rollback) installs again without a download or a
    # metadata refresh if the last refresh, at most this long ago, listed it (seconds; 0: always refresh first)
    vouched_max_age_s: NonNegFloat = 3600.0
    # Refresh the image repository's metadata this long (±20 %) after the last refresh even when nothing installs,
    # so the fast path above stays usable and expired or revoked metadata is noticed (seconds; 0: only on installs)
    refresh_s: NonNegFloat = 1800.0
    isolated: bool = True  # signature checks, TUF and downloads in a short-lived child process (~15 MB less resident)

    def __post_init__(self) -> None:
        if self.retry_max_s < self.retry_base_s:
            raise ValueError(f"'retry_max_s' ({self.retry_max_s}) is below 'retry_base_s' ({self.retry_base_s})")


class HealthConfig(Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    """How a candidate model is health-checked before commit ([health] table; the one definition)."""

    live_inferences: NonNegInt = 20  # live inferences without error that confirm a candidate
    live_window: NonNegFloat = 30.0  # seconds; with fewer live inferences and no error, commit at the end
    latency_runs: PosInt = 20  # golden-vector runs whose median is held to the bundle's latency budget


DirectorKey = Annotated[str, Meta(pattern=r"^[0-9a-fA-F]{64}$")]


class AgentConfig(Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    device_id: str
    data_dir: Path
    director_public_keys: Annotated[tuple[DirectorKey, ...], Meta(min_length=1)]  # hex Ed25519 keys for desired state
    socket_path: Path = UNSET  # default <data_dir>/agent.sock
    broker: BrokerConfig = field(default_factory=BrokerConfig)
    telemetry: TelemetryConfig = field(default_factory=TelemetryConfig)
    capture: CaptureConfig = field(default_factory=CaptureConfig)
    identity: IdentityConfig | None = None
    arch: str = field(default_factory=platform.machine)
    download_timeout: PosFloat = 30.0  # seconds without progress before giving up
    inference_threads: PosInt = 1
    log_level: LogLevel = "INFO"
    log_format: LogFormat = "text"  # text | json (one object per line); no own timestamp under journald either way
    http_port: LocalPort | None = None  # local HTTP API on 127.0.0.1; None: Unix socket only
    image_repo: ImageRepoConfig | None = field(default=None, name="image_repository")  # without it nothing installs
    download: DownloadConfig = field(default_factory=DownloadConfig)
    health: HealthConfig = field(default_factory=HealthConfig)
    development: bool = False  # a test or development device: test hooks may be armed (never on a fleet device)

    def __post_init__(self) -> None:
        try:
            validate_device_id(self.device_id)
        except ProtocolError as exc:
            raise ValueError(str(exc)) from None
        force_setattr(self, "log_level", self.log_level.upper())
        if self.socket_path == UNSET:
            force_setattr(self, "socket_path", self.data_dir / "agent.sock")
        ident = self.identity
        if ident is not None:
            if ident.directory == UNSET:
                ident = msgspec.structs.replace(ident, directory=self.data_dir / "identity")
                force_setattr(self, "identity", ident)
            if not self.broker.tls:
                d = ident.directory
                b = msgspec.structs.replace(
                    self.broker, ca_file=d / "ca.pem", cert_file=d / "device.pem", key_file=d / "device.key"
                )
                force_setattr(self, "broker", b)


def _check_root(path: Path) -> None:
    """The pinned TUF root must be readable JSON metadata of type root."""
    try:
        data = json.loads(path.read_bytes())
    except OSError as exc:
        raise ValueError(f"cannot read root metadata {path}: {exc.strerror}") from None
    except ValueError as exc:
        raise ValueError(f"root metadata {path} is not JSON: {exc}") from None
    kind = data.get("signed", {}).get("_type") if isinstance(data, dict) else None
    if kind != "root":
        raise ValueError(f"{path} must be TUF root metadata (signed._type 'root'), got {kind!r}")


def _dec_hook(typ: type, obj: Any) -> Any:
    if typ is Path and isinstance(obj, str):
        return Path(obj)
    raise NotImplementedError


_AT = re.compile(r"^(?P<msg>.*?)(?: - at `\$(?P<path>[^`]*)`)?$", re.S)


def _explain(exc: msgspec.ValidationError, where: str) -> str:
    """msgspec's message, phrased with the TOML table and key: ``file [broker]: 'port' must be int <= 65535``."""
    m = _AT.match(str(exc))
    assert m is not None
    msg, path = m.group("msg"), [p for p in re.split(r"\.|\[|\]", (m.group("path") or "").lstrip(".")) if p]
    tables = [p for p in path if not p.isdigit()]
    key: str | None = None
    if (u := re.match(r"Object (contains unknown|missing required) field `(.+)`", msg)) is not None:
        key, msg = u.group(2), "unknown key (a typo?)" if u.group(1).startswith("contains") else "missing required key"
        return f"{where}{_tables(tables)}: {msg} {key!r}"
    if msg.startswith(("Expected", "Invalid enum value")) and tables:
        key = tables.pop()
        msg = re.sub(r"^Expected `(\w+)`", lambda e: f"must be {'a number' if e.group(1) == 'float' else e.group(1)}", msg)
        if msg.startswith("Invalid enum value"):
            msg = f"must be one of debug, info, warning, error, critical, got {msg.split(' ', 3)[-1]}"
        return f"{where}{_tables(tables)}: {key!r} {msg.replace('`', '')}"
    return f"{where}{_tables(tables)}: {msg}"  # a rule across keys (``__post_init__``), in the table it concerns


def _tables(tables: list[str]) -> str:
    return "".join(f" [{t}]" for t in tables)


def parse_config(data: dict[str, Any], where: str = "config") -> AgentConfig:
    try:
        return msgspec.convert(data, AgentConfig, dec_hook=_dec_hook)
    except msgspec.ValidationError as exc:
        raise ConfigError(_explain(exc, where)) from None


def load_config(path: Path) -> AgentConfig:
    try:
        with open(path, "rb") as f:
            data = tomllib.load(f)
    except OSError as exc:
        raise ConfigError(f"cannot read config {path}: {exc.strerror}") from None
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"{path}: invalid TOML: {exc}") from None
    return parse_config(data, str(path))

"""Versioned message schemas for the four device topics.

``decode(kind, payload)`` turns raw MQTT bytes into a validated message or raises
:class:`SchemaError` / :class:`SignatureError`; it never raises anything else,
so a receiver can count and log the failure and carry on. ``encode`` is its
inverse. The writing side uses the same classes: ``Status``, ``Event`` and
``Telemetry`` have ``to_payload()``, which runs the reader's checks on what it
is about to write and raises :class:`SchemaError` instead of sending a message
the controller would refuse. See docs/protocol.md for the field reference.
"""

from __future__ import annotations

import json
import re
import time
from dataclasses import asdict, dataclass, field, fields, replace
from itertools import chain
from typing import Any

from shared import compact
from shared.canonical import canonical_json
from shared.errors import ProtocolError, SchemaError
from shared.features import BatchFeatureValue
from shared.schema import Reader
from shared.telemetry import CONFIDENCE_BINS, MAX_CONFUSION_CLASSES, N_LATENCY_BUCKETS
from shared.topics import Kind, validate_device_id

SCHEMA_VERSION = 1
MAX_PAYLOAD_BYTES = 256 * 1024  # bytes; larger payloads are rejected unread
MAX_INFLATED_BYTES = 1024 * 1024  # bytes a compressed payload may inflate to
MAX_LATE_LABELS = 1000  # late labels per telemetry message
_ROLE = re.compile(r"^(production|canary|shadow|arm-[a-z0-9_-]{1,32})$")
_SHA256 = re.compile(r"^[0-9a-f]{64}$")
ONLINE, OFFLINE = "online", "offline"
SEVERITIES = ("info", "warning", "error")
MAX_KIND, MAX_MESSAGE = 64, 4096  # characters of an event's kind and message
# A device's seq stream (ADR 0080): made at random with its seq counter, so a counter that restarts
# (a wiped data directory) starts a new stream; "" = an agent that sends none (one stream per device).
STREAM_PATTERN = r"^[0-9a-f]{0,32}$"
_STREAM = re.compile(STREAM_PATTERN)


def validate_role(role: str, where: str = "role") -> str:
    if not isinstance(role, str) or not _ROLE.match(role):
        raise SchemaError(f"{where}: invalid role {role!r}, expected production, canary, shadow or arm-<name>")
    return role


def validate_sha256(value: str, where: str) -> str:
    if not isinstance(value, str) or not _SHA256.match(value):
        raise SchemaError(f"{where}: expected 64 lowercase hex characters (sha256), got {value!r:.80}")
    return value


def _device_id(r: Reader) -> str:
    did = r.string("device_id", max_len=64)
    try:
        return validate_device_id(did)
    except ProtocolError as exc:
        raise SchemaError(f"{r.where}.device_id: {exc}") from None


def validate_stream(stream: Any, where: str = "stream") -> str:
    if not isinstance(stream, str) or not _STREAM.match(stream):
        raise SchemaError(f"{where}: expected up to 32 lowercase hex characters (a seq stream id), got {stream!r:.60}")
    return stream


def _stream(r: Reader) -> str:
    value = r.data.get("stream")
    return "" if value is None else validate_stream(value, f"{r.where}.stream")


def _without_empty_stream(data: dict[str, Any]) -> dict[str, Any]:
    if not data.get("stream"):  # omitted: a message without a stream is byte for byte what agents sent before it
        data.pop("stream", None)
    return data


def _checked(message: Any, data: dict[str, Any]) -> dict[str, Any]:
    """``data`` if the reader of ``message``'s type accepts it; else SchemaError naming the field."""
    type(message).read(Reader(data))
    return data


def _shallow(message: Any) -> dict[str, Any]:
    return {f.name: getattr(message, f.name) for f in fields(message)}


# --- desired (cloud -> device), signed by the director ----------------------


@dataclass(frozen=True)
class Assignment:
    """Which bundle a device should run in one role."""

    model: str
    version: int
    sha256: str
    length: int  # bytes
    url: str

    @classmethod
    def read(cls, r: Reader) -> Assignment:
        return cls(
            model=r.string("model", max_len=128),
            version=r.integer("version", minimum=1),
            sha256=validate_sha256(r.string("sha256"), f"{r.where}.sha256"),
            length=r.integer("length", minimum=1),
            url=r.string("url", max_len=2048),
        )


@dataclass(frozen=True)
class Routing:
    """Bandit arm weights: the agent serves each production request from an ``arm-*`` role drawn by weight.

    ``seed`` makes the draws reproducible; an empty routing (the default) serves production as usual.
    """

    experiment: int
    seed: int
    weights: dict[str, float]

    @classmethod
    def read(cls, r: Reader) -> Routing:
        weights = {}
        sub = r.obj("weights")
        assert sub is not None
        for role in sub.data:
            if not isinstance(role, str) or not role.startswith("arm-"):
                raise SchemaError(f"{sub.where}: weights are per arm role (arm-<name>), got {role!r:.40}")
            validate_role(role, f"{sub.where}.{role}")
            w = sub.number(role, minimum=0)
            if w > 1:
                raise SchemaError(f"{sub.where}.{role}: a weight is at most 1, got {w}")
            weights[role] = float(w)
        if len(weights) < 2 or abs(sum(weights.values()) - 1) > 1e-6:
            raise SchemaError(f"{sub.where}: expected at least two arm weights summing to 1, got {weights}")
        return cls(experiment=r.integer("experiment", minimum=1), seed=r.integer("seed", minimum=0), weights=weights)


@dataclass(frozen=True)
class Desired:
    """The signed part of a desired-state message."""

    device_id: str
    counter: int  # strictly increasing per device; replays are rejected
    issued_at: float  # unix seconds
    expires_at: float  # unix seconds
    assignments: dict[str, Assignment]
    sampling: dict[str, Any] = field(default_factory=dict)
    routing: Routing | None = None  # bandit arm weights; None: production serves as usual
    features: tuple[BatchFeatureValue, ...] = ()  # batch-feature values for this device, with validity times
    schema: int = SCHEMA_VERSION

    @classmethod
    def read(cls, r: Reader) -> Desired:
        r.schema_version(SCHEMA_VERSION)
        assignments = {}
        for role, sub in r.items("assignments"):
            validate_role(role, sub.where)
            assignments[role] = Assignment.read(sub)
        return cls(
            device_id=_device_id(r),
            counter=r.integer("counter", minimum=1),
            issued_at=r.number("issued_at"),
            expires_at=r.number("expires_at"),
            assignments=assignments,
            sampling=r.raw_obj("sampling", optional=True),
            routing=_routing(r),
            features=_features(r),
        )

    def to_dict(self) -> dict[str, Any]:
        data = asdict(replace(self, features=()))
        if self.routing is None:
            del data["routing"]  # absent, so desired states without routing sign exactly as before
        del data["features"]
        if self.features:  # likewise absent when there are none
            data["features"] = [f.to_wire() for f in self.features]
        return data


MAX_DESIRED_FEATURES = 256  # batch-feature values in one desired state


def _features(r: Reader) -> tuple[BatchFeatureValue, ...]:
    items = r.array("features", optional=True, max_items=MAX_DESIRED_FEATURES)
    return tuple(BatchFeatureValue.from_wire(f, f"{r.where}.features[{i}]") for i, f in enumerate(items))


def _routing(r: Reader) -> Routing | None:
    sub = r.obj("routing", optional=True)
    return None if sub is None or not sub.data else Routing.read(sub)


# --- device -> cloud ---------------------------------------------------------


@dataclass(frozen=True)
class RunningModel:
    """What actually runs in one role, and why (e.g. after a rollback)."""

    model: str
    version: int
    sha256: str
    runtime: str
    since: float
    reason: str = ""

    @classmethod
    def read(cls, r: Reader) -> RunningModel:
        return cls(
            model=r.string("model", max_len=128),
            version=r.integer("version", minimum=1),
            sha256=validate_sha256(r.string("sha256"), f"{r.where}.sha256"),
            runtime=r.string("runtime", choices=("onnx", "tflite")),
            since=r.number("since"),
            reason=r.string("reason", optional=True) or "",
        )


@dataclass(frozen=True)
class Status:
    device_id: str
    seq: int
    sent_at: float
    state: str  # online | offline
    agent_version: str = ""
    hardware: dict[str, Any] = field(default_factory=dict)
    models: dict[str, RunningModel] = field(default_factory=dict)
    ota: dict[str, Any] = field(default_factory=dict)
    schema: int = SCHEMA_VERSION

    @classmethod
    def read(cls, r: Reader) -> Status:
        r.schema_version(SCHEMA_VERSION)
        models = {}
        for role, sub in r.items("models", optional=True):
            validate_role(role, sub.where)
            models[role] = RunningModel.read(sub)
        return cls(
            device_id=_device_id(r),
            seq=r.integer("seq", minimum=0),
            sent_at=r.number("sent_at"),
            state=r.string("state", choices=(ONLINE, OFFLINE)),
            agent_version=r.string("agent_version", optional=True, max_len=64) or "",
            hardware=r.raw_obj("hardware", optional=True),
            models=models,
            ota=r.raw_obj("ota", optional=True),
        )

    def to_payload(self) -> dict[str, Any]:
        data = {**_shallow(self), "models": {role: asdict(m) for role, m in self.models.items()}}
        return _checked(self, data)


def _counts(value: Any, where: str, length: int | None = None, max_items: int = 100_000) -> list[int]:
    if not isinstance(value, list) or len(value) > max_items or (length is not None and len(value) != length):
        want = f"{length} counts" if length is not None else f"a list of at most {max_items} counts"
        got = f"{len(value)} items" if isinstance(value, list) else type(value).__name__
        raise SchemaError(f"{where}: expected {want}, got {got}")
    # Fast path in C (map/set/min): telemetry windows carry hundreds of counts.
    if value and (not set(map(type, value)) <= _INT_ONLY or min(value) < 0):
        for i, v in enumerate(value):
            if not isinstance(v, int) or isinstance(v, bool) or v < 0:
                raise SchemaError(f"{where}[{i}]: expected a non-negative integer, got {v!r:.40}")
    return value


_INT_ONLY = {int}  # exactly int: bool (a subclass) and int subclasses take the slow path and are named


def _count_map(r: Reader, key: str, keys: tuple[str, ...] = ()) -> dict[str, int]:
    sub = r.obj(key, optional=True)
    if sub is None:
        return dict.fromkeys(keys, 0)
    out = dict.fromkeys(keys, 0)
    for k in sub.data:
        out[str(k)] = sub.integer(k, minimum=0)
    return out


def _feature_counts(feats: Reader) -> dict[str, list[int]]:
    data = feats.data
    if len(data) > 4096:
        raise SchemaError(f"{feats.where}: expected at most 4096 features, got {len(data)}")
    # Fast path: every histogram checked at once in C; on any doubt, per feature with a precise error.
    if all(type(v) is list and len(v) <= 100_000 for v in data.values()):
        flat = list(chain.from_iterable(data.values()))
        if not flat or (set(map(type, flat)) <= _INT_ONLY and min(flat) >= 0):
            return dict(data)
    return {str(k): _counts(v, f"{feats.where}.{k}") for k, v in data.items()}


def read_role_summary(r: Reader) -> dict[str, Any]:
    """Validate one role summary (format in ``shared.telemetry``) so ``merge`` cannot fail on types."""
    feats = r.obj("features", optional=True)
    features = {} if feats is None else _feature_counts(feats)
    out = {
        "model": r.string("model", max_len=128),
        "version": r.integer("version", minimum=1),
        "count": r.integer("count", minimum=0),
        "errors": r.integer("errors", minimum=0),
        "samples": r.integer("samples", optional=True, minimum=0) or 0,
        "latency_ms": _counts(r.array("latency_ms"), f"{r.where}.latency_ms", N_LATENCY_BUCKETS),
        "predictions": _counts(r.array("predictions", optional=True), f"{r.where}.predictions"),
        "features": features,
        "shadow": _count_map(r, "shadow", ("agree", "disagree")),
        "labels": _count_map(r, "labels", ("count", "correct")),
    }
    # Optional parts (newer agents): the top-class confidence histogram and data-quality counts.
    if r.data.get("confidence") is not None:
        out["confidence"] = _counts(r.array("confidence"), f"{r.where}.confidence", CONFIDENCE_BINS)
    quality = r.obj("quality", optional=True)
    if quality is not None:
        out["quality"] = {
            k: _counts(quality.array(k), f"{quality.where}.{k}", max_items=4096) for k in ("nan", "inf", "out_of_range")
        }
    if r.data.get("confusion") is not None:
        out["confusion"] = _confusion(r.array("confusion"), f"{r.where}.confusion")
    return out


def _confusion(rows: list[Any], where: str) -> list[list[int]]:
    """A square matrix of counts, at most MAX_CONFUSION_CLASSES on a side (``shared.telemetry``)."""
    k = len(rows)
    if not 1 <= k <= MAX_CONFUSION_CLASSES:
        raise SchemaError(f"{where}: expected 1 to {MAX_CONFUSION_CLASSES} rows, got {k}")
    return [_counts(row, f"{where}[{i}]", k) for i, row in enumerate(rows)]


@dataclass(frozen=True)
class LateLabel:
    """A label for a prediction of an earlier window, joined on the device (see ``shared.telemetry``)."""

    prediction_id: str
    role: str
    model: str
    version: int
    window_start: float  # the prediction's window (device clock, unix seconds)
    predicted: int | None
    label: int

    @classmethod
    def read(cls, r: Reader) -> LateLabel:
        predicted = r.data.get("predicted")
        if predicted is not None:
            predicted = r.integer("predicted", minimum=0)
        return cls(
            prediction_id=r.string("prediction_id", max_len=64),
            role=validate_role(r.string("role", max_len=40), f"{r.where}.role"),
            model=r.string("model", max_len=128),
            version=r.integer("version", minimum=1),
            window_start=r.number("window_start", minimum=0),
            predicted=predicted,
            label=r.integer("label", minimum=0),
        )


@dataclass(frozen=True)
class Telemetry:
    """One window of metrics; role summaries and counters are sums (see ``shared.telemetry``)."""

    device_id: str
    seq: int
    sent_at: float
    window_start: float
    window_s: float
    roles: dict[str, dict[str, Any]] = field(default_factory=dict)
    system: dict[str, Any] = field(default_factory=dict)  # gauges (psutil), not merged
    counters: dict[str, int] = field(default_factory=dict)  # agent-level sums, e.g. desired_rejected
    agent: dict[str, Any] = field(default_factory=dict)  # version, boot id, window index since boot
    labels: list[LateLabel] = field(default_factory=list)  # labels for predictions of earlier windows
    stream: str = ""  # the seq stream (ADR 0080): seqs are unique per (device, stream)
    schema: int = SCHEMA_VERSION

    @classmethod
    def read(cls, r: Reader) -> Telemetry:
        r.schema_version(SCHEMA_VERSION)
        roles = {}
        for role, sub in r.items("roles", optional=True):
            validate_role(role, sub.where)  # first, so a bad role is named as such
            roles[role] = read_role_summary(sub)
        return cls(
            device_id=_device_id(r),
            seq=r.integer("seq", minimum=0),
            sent_at=r.number("sent_at"),
            window_start=r.number("window_start"),
            window_s=r.number("window_s", minimum=0),
            roles=roles,
            system=r.raw_obj("system", optional=True),
            counters=_count_map(r, "counters"),
            agent=r.raw_obj("agent", optional=True),
            labels=[
                LateLabel.read(Reader(x, f"{r.where}.labels[{i}]"))
                for i, x in enumerate(r.array("labels", optional=True, max_items=MAX_LATE_LABELS))
            ],
            stream=_stream(r),
        )

    def to_payload(self) -> dict[str, Any]:
        data = _without_empty_stream(_shallow(self))
        labels = data.pop("labels")
        if labels:  # omitted when empty: windows without late labels stay as they were
            data["labels"] = [asdict(x) for x in labels]
        return _checked(self, data)


@dataclass(frozen=True)
class Event:
    device_id: str
    seq: int
    sent_at: float
    kind: str  # e.g. ota.rejected, ota.committed, ota.rolled_back, message.malformed
    severity: str = "info"
    message: str = ""
    detail: dict[str, Any] = field(default_factory=dict)
    stream: str = ""  # the seq stream (ADR 0080): an event is stored once per (device, stream, seq)
    schema: int = SCHEMA_VERSION

    @classmethod
    def read(cls, r: Reader) -> Event:
        r.schema_version(SCHEMA_VERSION)
        return cls(
            device_id=_device_id(r),
            seq=r.integer("seq", minimum=0),
            sent_at=r.number("sent_at"),
            kind=r.string("kind", max_len=MAX_KIND),
            severity=r.string("severity", choices=SEVERITIES),
            message=r.string("message", optional=True, max_len=MAX_MESSAGE) or "",
            detail=r.raw_obj("detail", optional=True),
            stream=_stream(r),
        )

    def to_payload(self) -> dict[str, Any]:
        return _checked(self, _without_empty_stream(_shallow(self)))


# --- ack (cloud -> device): windows and events the controller has taken over ----

MAX_ACK_SEQS = 10_000  # seqs in one acknowledgement


@dataclass(frozen=True)
class WindowAck:
    """Telemetry windows and events (by seq) the controller has committed, or refused for good: the agent forgets them.

    The broker's PUBACK only says the broker has a window or an event; this says the controller does
    (docs/adr/0068, 0078). Not signed: only controllers may publish on a device's ``ack`` topic (ACL).
    """

    seqs: tuple[int, ...]
    schema: int = SCHEMA_VERSION

    @classmethod
    def read(cls, r: Reader) -> WindowAck:
        r.schema_version(SCHEMA_VERSION)
        return cls(seqs=tuple(_counts(r.array("seqs", max_items=MAX_ACK_SEQS), f"{r.where}.seqs")))

    def to_payload(self) -> dict[str, Any]:
        return _checked(self, {"schema": self.schema, "seqs": list(self.seqs)})


def decode_ack(payload: bytes) -> WindowAck:
    """Validate a payload received on a device's ``ack`` topic."""
    return WindowAck.read(Reader(parse_json(payload)))


DeviceMessage = Status | Telemetry | Event
_READERS: dict[Kind, Any] = {Kind.STATUS: Status, Kind.TELEMETRY: Telemetry, Kind.EVENTS: Event}


def _no_constants(name: str) -> Any:
    raise ValueError(f"{name} is not valid JSON")


def parse_json(payload: bytes, max_bytes: int = MAX_PAYLOAD_BYTES) -> Any:
    """Parse a payload: JSON, or JSON deflated by ``shared.compact`` (told apart by the first byte)."""
    if len(payload) > max_bytes:
        raise SchemaError(f"payload too large: {len(payload)} bytes, limit {max_bytes}")
    if payload[:1] == bytes([compact.ZLIB_MAGIC]):
        payload = compact.decompress(payload, MAX_INFLATED_BYTES)
    try:
        return json.loads(payload, parse_constant=_no_constants)
    except (UnicodeDecodeError, ValueError, RecursionError) as exc:
        raise SchemaError(f"payload is not valid JSON: {exc}") from None


def decode(kind: Kind, payload: bytes) -> DeviceMessage:
    """Validate a device->cloud payload received on a topic of ``kind``."""
    if kind not in _READERS:
        raise SchemaError(f"no device message schema for topic kind {kind.value!r}")
    return _READERS[kind].read(Reader(parse_json(payload)))  # type: ignore[no-any-return]


def decode_desired_envelope(payload: bytes) -> dict[str, Any]:
    """Parse a desired payload into its envelope; signature checks come next."""
    data = parse_json(payload)
    if not isinstance(data, dict):
        raise SchemaError("$: expected a signed envelope object")
    return data


def encode(message: DeviceMessage | WindowAck | dict[str, Any]) -> bytes:
    """Canonical JSON of a typed message (checked by ``to_payload``), or of a dict as-is (tests craft bad ones)."""
    data = message if isinstance(message, dict) else message.to_payload()
    return canonical_json(data)


def encode_compact(message: DeviceMessage | dict[str, Any]) -> bytes:
    """``encode`` then deflate with the v1 dictionary (used for telemetry; ``decode`` reads both)."""
    return compact.compress(encode(message))


def now() -> float:
    return round(time.time(), 3)

"""Database tables (SQLModel), grouped by the concern that owns them.

Tables change only through an Alembic migration (controller/migrations/);
``alembic revision --autogenerate`` diffs this module against the database.
API shapes live in ``controller.api.schemas``.
"""

from __future__ import annotations

from datetime import datetime, timezone
from typing import Any

from sqlalchemy import JSON, BigInteger, Column, Index, LargeBinary, UniqueConstraint
from sqlmodel import Field, SQLModel


def utcnow() -> datetime:
    return datetime.now(timezone.utc)


class Device(SQLModel, table=True):
    id: str = Field(primary_key=True, max_length=64)
    arch: str = Field(default="", max_length=32)
    hardware_class: str = Field(default="", max_length=64, index=True)
    region: str = Field(default="", max_length=64, index=True)
    tags: list[str] = Field(default_factory=list, sa_column=Column(JSON, nullable=False))
    hardware: dict[str, Any] = Field(default_factory=dict, sa_column=Column(JSON, nullable=False))
    desired_counter: int = 0
    desired: dict[str, Any] = Field(default_factory=dict, sa_column=Column(JSON, nullable=False))
    desired_expires_at: float = Field(default=0.0, index=True)  # unix seconds: the signed desired state lapses then
    desired_base_url: str = Field(default="", max_length=512)  # EDGEFLEET_PUBLIC_URL its bundle URLs were signed with
    routing: dict[str, Any] = Field(  # signed with the desired state: bandit arm weights (shared.messages.Routing)
        default_factory=dict, sa_column=Column(JSON, nullable=False, server_default="{}")
    )
    batch_features: list[dict[str, Any]] = Field(  # signed with the desired state: values in force or to come (wire form)
        default_factory=list, sa_column=Column(JSON, nullable=False, server_default="[]")
    )
    sampling: dict[str, Any] = Field(  # signed with the desired state: sampling settings (e.g. shadow_rate)
        default_factory=dict, sa_column=Column(JSON, nullable=False, server_default="{}")
    )
    actual: dict[str, Any] = Field(default_factory=dict, sa_column=Column(JSON, nullable=False))
    online: bool = False
    agent_version: str = Field(default="", max_length=64)
    last_seen: datetime | None = None
    created_at: datetime = Field(default_factory=utcnow)


class ModelVersion(SQLModel, table=True):
    __table_args__ = (UniqueConstraint("name", "version"),)
    id: int | None = Field(default=None, primary_key=True)
    name: str = Field(index=True, max_length=128)
    version: int
    label: str = ""
    runtime: str = Field(max_length=16)
    sha256: str = Field(max_length=64, index=True)
    length: int
    manifest: dict[str, Any] = Field(sa_column=Column(JSON, nullable=False))
    parent_version: int | None = None
    registered_by: str = Field(default="", max_length=64)
    approved_by: str | None = Field(default=None, max_length=64)
    approved_at: datetime | None = None
    revoked: bool = False
    created_at: datetime = Field(default_factory=utcnow)


class ModelFloor(SQLModel, table=True):
    """Lowest version of a model a device may install (raised by revoke)."""

    name: str = Field(primary_key=True, max_length=128)
    floor: int = 1
    updated_at: datetime = Field(default_factory=utcnow)


class ModelAlias(SQLModel, table=True):
    name: str = Field(primary_key=True, max_length=128)
    alias: str = Field(primary_key=True, max_length=64)
    version: int
    updated_at: datetime = Field(default_factory=utcnow)


class Cohort(SQLModel, table=True):
    name: str = Field(primary_key=True, max_length=64)
    description: str = Field(default="", max_length=1024)
    members: list[str] = Field(default_factory=list, sa_column=Column(JSON, nullable=False))  # static device ids
    filter: dict[str, Any] = Field(default_factory=dict, sa_column=Column(JSON, nullable=False))  # dynamic (CohortFilter)
    created_at: datetime = Field(default_factory=utcnow)


class ApiToken(SQLModel, table=True):
    """An API credential. Only the sha256 of the secret is stored."""

    id: int | None = Field(default=None, primary_key=True)
    principal: str = Field(max_length=64, index=True)
    role: str = Field(max_length=16)
    label: str = Field(default="", max_length=128)
    token_hash: str = Field(max_length=64, unique=True)
    created_by: str = Field(default="", max_length=64)
    created_at: datetime = Field(default_factory=utcnow)
    revoked_at: datetime | None = None
    expires_at: datetime | None = None  # None: until revoked


class AuditEntry(SQLModel, table=True):
    """One link of the hash chain. ``hash`` covers ``prev_hash`` and every other field."""

    seq: int = Field(primary_key=True)  # 1, 2, 3, ... without gaps
    at: str = Field(max_length=32, index=True)  # ISO 8601 UTC, fixed width: sorts as text
    actor: str = Field(max_length=128)
    action: str = Field(max_length=64, index=True)
    subject: str = Field(max_length=256, index=True)
    reason: str = Field(default="", max_length=4096)
    evidence: dict[str, Any] = Field(default_factory=dict, sa_column=Column(JSON, nullable=False))
    prev_hash: str = Field(max_length=64)
    hash: str = Field(max_length=64)


class AuditHead(SQLModel, table=True):
    """Single row: the chain's length and last hash; locks appends across replicas."""

    id: int = Field(default=1, primary_key=True)
    seq: int = 0
    hash: str = Field(default="0" * 64, max_length=64)


class ActualChange(SQLModel, table=True):
    """What a device reported running in one role from ``at`` on (one row per change)."""

    __table_args__ = (Index("ix_actualchange_device_role_at", "device_id", "role", "at"),)
    id: int | None = Field(default=None, primary_key=True)
    device_id: str = Field(max_length=64)
    role: str = Field(max_length=40)
    at: str = Field(max_length=32)  # ISO 8601 UTC, when the controller learned it
    model: str | None = Field(default=None, max_length=128)  # None: role emptied
    version: int | None = None
    sha256: str | None = Field(default=None, max_length=64)
    since: float | None = None  # device's own clock: loaded at
    reason: str = Field(default="", max_length=1024)


class BatchFeature(SQLModel, table=True):
    """One value of a batch feature for a scope (``device:<id>``, ``cohort:<name>``, ``fleet``) and its validity.

    The past is never changed (only ``valid_to`` moves, to now or later, when a value is ended): the history
    is what point-in-time joins read. ``valid_from`` is never before ``recorded_at`` (no backdating), so a
    value cannot be joined to a sample captured before it was set.
    """

    __table_args__ = (Index("ix_batchfeature_name_scope_from", "name", "scope", "valid_from"),)
    id: int | None = Field(default=None, primary_key=True)
    name: str = Field(max_length=64)
    scope: str = Field(max_length=200, index=True)
    value: float
    valid_from: float  # unix seconds, inclusive
    valid_to: float | None = None  # unix seconds, exclusive; None: until a newer value replaces it
    recorded_at: float  # unix seconds
    set_by: str = Field(default="", max_length=64)
    reason: str = Field(default="", max_length=1024)
    audit_seq: int = 0


class DesiredChange(SQLModel, table=True):
    """A decision to run a version in one role of one device, linked to its audit entry."""

    __table_args__ = (Index("ix_desiredchange_device_role_at", "device_id", "role", "at"),)
    id: int | None = Field(default=None, primary_key=True)
    device_id: str = Field(max_length=64)
    role: str = Field(max_length=40)
    at: str = Field(max_length=32)  # ISO 8601 UTC
    model: str = Field(max_length=128)
    version: int
    audit_seq: int


class DeviceEvent(SQLModel, table=True):
    """An event a device reported; stored once per (device, stream, seq): the agent sends it until acknowledged
    (ADR 0078), and a device whose seq counter started again has a new stream (ADR 0080; "" for agents without)."""

    __table_args__ = (Index("ux_deviceevent_device_stream_seq", "device_id", "stream", "seq", unique=True),)
    id: int | None = Field(default=None, primary_key=True)
    device_id: str = Field(index=True, max_length=64)
    stream: str = Field(default="", max_length=32)
    seq: int = Field(sa_type=BigInteger)
    kind: str = Field(max_length=64)
    severity: str = Field(max_length=16)
    message: str = ""
    detail: dict[str, Any] = Field(default_factory=dict, sa_column=Column(JSON, nullable=False))
    received_at: datetime = Field(default_factory=utcnow)


class TelemetryCursor(SQLModel, table=True):
    """Dedupe state for telemetry per device and seq stream (ADR 0080; "" for agents that send none): the
    highest seq merged and a bitmap of the ``DEDUPE_WINDOW`` seqs below it (bit i set: seq ``high_seq - i`` was merged)."""

    device_id: str = Field(primary_key=True, max_length=64)
    stream: str = Field(default="", primary_key=True, max_length=32)
    high_seq: int = Field(sa_type=BigInteger)
    seen_bits: int = Field(sa_type=BigInteger)


class TelemetryGap(SQLModel, table=True):
    """Seqs ``lo..hi`` of a device's seq stream that had not arrived when they fell below the dedupe bitmap.

    A window that comes later than the bitmap reaches is new exactly when its seq is in a gap
    (the gap is then split around it). Seqs used by status and events messages make gaps too;
    the leader deletes gaps older than ``telemetry_late_horizon_s``."""

    device_id: str = Field(primary_key=True, max_length=64)
    stream: str = Field(default="", primary_key=True, max_length=32)
    lo: int = Field(primary_key=True, sa_type=BigInteger)
    hi: int = Field(sa_type=BigInteger)
    created_at: float = Field(default=0.0, index=True)  # unix seconds


class TelemetryAggregate(SQLModel, table=True):
    """Merged role summaries per (model, version, role, cohort, window) and writer shard.

    Each ingesting process writes only its own ``shard`` rows, so replicas never
    contend for a row; readers merge the shards (everything is a sum).
    """

    __table_args__ = (UniqueConstraint("model", "version", "role", "cohort", "window_start", "shard"),)
    id: int | None = Field(default=None, primary_key=True)
    model: str = Field(max_length=128)
    version: int
    role: str = Field(max_length=40)
    cohort: str = Field(max_length=64)  # "*" is the whole fleet
    window_start: int = Field(index=True, sa_type=BigInteger)  # unix seconds, aligned to window_s
    window_s: int
    shard: str = Field(max_length=32)
    windows: int = 0  # device windows merged
    summary: dict[str, Any] = Field(default_factory=dict, sa_column=Column(JSON, nullable=False))
    updated_at: float = 0.0


# --- identity: enrolment tokens and device certificates ---------------------------


class EnrolmentToken(SQLModel, table=True):
    """A one-time enrolment token; only its sha256 is stored."""

    token_sha256: str = Field(primary_key=True, max_length=64)
    device_id: str = Field(index=True, max_length=64)
    expires_at: datetime
    used_at: datetime | None = None
    created_at: datetime = Field(default_factory=utcnow)


class DeviceCertificate(SQLModel, table=True):
    """A client certificate issued to a device; revoked ones go into the CRL."""

    serial: str = Field(primary_key=True, max_length=40)  # hex: X.509 serials are up to 159 bits
    device_id: str = Field(index=True, max_length=64)
    not_before: datetime
    not_after: datetime
    issued_at: datetime = Field(default_factory=utcnow)
    revoked_at: datetime | None = Field(default=None, index=True)
    pem: str


# --- leadership -------------------------------------------------------------------


class LeaderLease(SQLModel, table=True):
    """The one leader among replicas (controller.core.leader): who holds the lease, until when, in which term."""

    name: str = Field(primary_key=True, max_length=40)
    holder: str = Field(max_length=64)
    term: int = Field(sa_column=Column(BigInteger, nullable=False))
    expires_at: float  # unix seconds


# --- release artifacts shared by every replica ------------------------------------


class BlobRow(SQLModel, table=True):
    """A content-addressed bundle (``controller.release.blobstore.DatabaseBlobStore``)."""

    __tablename__ = "blob"
    sha256: str = Field(primary_key=True, max_length=64)
    length: int = Field(sa_type=BigInteger)
    data: bytes = Field(sa_column=Column(LargeBinary, nullable=False))
    created_at: datetime = Field(default_factory=utcnow)


class TufMetadataRow(SQLModel, table=True):
    """One TUF metadata file as devices fetch it (``3.targets.json``, ``timestamp.json``), or the
    current copy of a role (``root``, ``targets``, ...); written under the TUF writer lock."""

    __tablename__ = "tufmetadata"
    name: str = Field(primary_key=True, max_length=64)
    data: bytes = Field(sa_column=Column(LargeBinary, nullable=False))
    updated_at: float = 0.0


class PendingTargets(SQLModel, table=True):
    """The next targets metadata, waiting for offline release-key signatures (one at a time)."""

    id: int = Field(default=1, primary_key=True)
    version: int
    data: bytes = Field(sa_column=Column(LargeBinary, nullable=False))  # the metadata with the signatures so far
    changes: list[str] = Field(default_factory=list, sa_column=Column(JSON, nullable=False))
    created_at: datetime = Field(default_factory=utcnow)


# --- monitoring: labels, objectives, alerts ------------------------------------------


class PredictionLabel(SQLModel, table=True):
    """Ground truth for one prediction, attributed to the prediction's window and version.

    Labels come from devices (feedback from local apps, joined on the device to
    the prediction it names) or from a back office through ``POST /v1/labels``,
    possibly days later. One row per (device, prediction id); a label posted
    again replaces the earlier one.
    """

    __table_args__ = (
        UniqueConstraint("device_id", "prediction_id"),
        Index("ix_predictionlabel_model_window", "model", "window_start"),
    )
    id: int | None = Field(default=None, primary_key=True)
    device_id: str = Field(max_length=64)
    prediction_id: str = Field(max_length=64)
    model: str = Field(max_length=128)
    version: int
    role: str = Field(default="production", max_length=40)
    window_start: int = Field(sa_type=BigInteger)  # unix seconds, aligned: the prediction's window
    predicted: int | None = None  # class the model predicted
    label: int  # true class
    source: str = Field(max_length=16)  # device | api
    received_at: float  # unix seconds


class SloObjective(SQLModel, table=True):
    """A service-level objective for a model in a cohort (see controller.monitoring.slo)."""

    name: str = Field(primary_key=True, max_length=64)
    model: str = Field(max_length=128)
    cohort: str = Field(default="*", max_length=64)
    kind: str = Field(max_length=16)  # accuracy | latency | availability | errors
    target: float  # share of good events, e.g. 0.99
    threshold_ms: float | None = None  # latency: a request slower than this is bad
    windows: list[Any] = Field(default_factory=list, sa_column=Column(JSON, nullable=False))  # burn-rate rules
    created_by: str = Field(default="", max_length=64)
    created_at: datetime = Field(default_factory=utcnow)


class MonitorAlert(SQLModel, table=True):
    """One alert (drift, SLO burn, data quality) from open to resolved, with its evidence."""

    __table_args__ = (Index("ix_monitoralert_key_state", "key", "state"),)
    id: int | None = Field(default=None, primary_key=True)
    key: str = Field(max_length=256)  # what fires: e.g. drift/digits/*/production
    kind: str = Field(max_length=16)  # drift | slo | quality
    model: str = Field(max_length=128)
    cohort: str = Field(max_length=64)
    severity: str = Field(max_length=16)  # page | ticket
    state: str = Field(max_length=16)  # firing | resolved
    summary: str = Field(default="", max_length=1024)
    evidence: dict[str, Any] = Field(default_factory=dict, sa_column=Column(JSON, nullable=False))
    opened_at: float
    updated_at: float
    resolved_at: float | None = None


# --- rollouts (controller.rollouts) -------------------------------------------------


class Rollout(SQLModel, table=True):
    """A staged move of one cohort from a baseline version to a candidate (controller.rollouts.state)."""

    id: int | None = Field(default=None, primary_key=True)
    cohort: str = Field(max_length=64, index=True)
    model: str = Field(max_length=128)
    candidate_version: int
    baseline_version: int
    state: str = Field(max_length=16, index=True)  # RUNNING | PAUSED | COMPLETED | ROLLED_BACK
    stage: int = 0  # index into stages
    waiting: str = Field(default="", max_length=16)  # why PAUSED: operator | check | approval | human
    stage_passed: bool = False  # the current stage passed and waits (check gate or approval) to advance
    reason: str = Field(default="", max_length=2048)
    stages: list[dict[str, Any]] = Field(default_factory=list, sa_column=Column(JSON, nullable=False))
    thresholds: dict[str, Any] = Field(default_factory=dict, sa_column=Column(JSON, nullable=False))
    stage_started_at: float = 0.0  # unix seconds
    deadline_at: float = 0.0  # unix seconds: an inconclusive stage pauses for a human after this
    last_analysis: dict[str, Any] = Field(default_factory=dict, sa_column=Column(JSON, nullable=False))
    created_by: str = Field(default="", max_length=64)
    created_at: float = 0.0
    updated_at: float = 0.0
    revision: int = 0  # +1 on every change: the compare-and-set that serialises replicas and requests


class RolloutDevice(SQLModel, table=True):
    """A device of a rollout's cohort that was put on the candidate, or skipped (hardware)."""

    rollout_id: int = Field(primary_key=True)
    device_id: str = Field(primary_key=True, max_length=64)
    bucket: float  # stable hash of (rollout, device) in [0, 1): devices join the candidate in bucket order
    arm: str = Field(max_length=16)  # canary | skipped
    role: str = Field(default="", max_length=40)  # the role the candidate was assigned to (shadow | production)
    stage: int = 0  # stage that put it on the candidate
    assigned_at: float = 0.0
    reverted: bool = False  # put back on the baseline


class RolloutWindow(SQLModel, table=True):
    """One device telemetry window of a device in a running rollout's cohort (slim role summaries).

    Written by the telemetry ingester beside the cohort aggregates, so the analysis
    compares canary and baseline devices one device at a time.
    """

    __table_args__ = (Index("ix_rolloutwindow_rollout_window", "rollout_id", "window_start"),)
    id: int | None = Field(default=None, primary_key=True)
    rollout_id: int
    device_id: str = Field(max_length=64)
    window_start: float  # unix seconds (the device's window start)
    window_s: float
    roles: dict[str, Any] = Field(default_factory=dict, sa_column=Column(JSON, nullable=False))


class RolloutDecision(SQLModel, table=True):
    """Each decision of a rollout with the numbers behind it (also in the audit log)."""

    id: int | None = Field(default=None, primary_key=True)
    rollout_id: int = Field(index=True)
    at: str = Field(max_length=32)
    stage: int
    actor: str = Field(max_length=128)
    action: str = Field(max_length=32)  # created | advanced | held | paused | resumed | promoted | rolled_back | completed
    verdict: str = Field(default="", max_length=16)  # pass | fail | inconclusive | ""
    reason: str = Field(default="", max_length=4096)
    evidence: dict[str, Any] = Field(default_factory=dict, sa_column=Column(JSON, nullable=False))
    audit_seq: int = 0


# --- experiments ------------------------------------------------------------------


class Experiment(SQLModel, table=True):
    """An A/B test or bandit over a cohort (controller.experiments); ``arms`` is [{name, version, share}]."""

    id: int | None = Field(default=None, primary_key=True)
    name: str = Field(max_length=128)
    kind: str = Field(max_length=16)  # ab | bandit
    cohort: str = Field(max_length=64, index=True)
    model: str = Field(max_length=128)
    arms: list[dict[str, Any]] = Field(default_factory=list, sa_column=Column(JSON, nullable=False))
    control: str = Field(max_length=32)
    primary_metric: str = Field(max_length=32)
    guardrails: list[str] = Field(default_factory=list, sa_column=Column(JSON, nullable=False))
    alpha: float = 0.05
    tau: float | None = None  # mixing sd of the confidence sequence; None: the metric's default
    min_devices: int = 5
    floor: float = 0.05  # bandit: minimum weight per arm
    seed: int = 0
    auto_promote: bool = True
    state: str = Field(max_length=16, index=True)
    weights: dict[str, float] = Field(default_factory=dict, sa_column=Column(JSON, nullable=False))
    weights_version: int = 0
    evaluation: dict[str, Any] = Field(default_factory=dict, sa_column=Column(JSON, nullable=False))  # the latest look
    looks: int = 0
    decision: dict[str, Any] = Field(default_factory=dict, sa_column=Column(JSON, nullable=False))  # once decided
    reason: str = Field(default="", max_length=1024)
    created_by: str = Field(default="", max_length=64)
    created_at: datetime = Field(default_factory=utcnow)
    ended_at: datetime | None = None


class ExperimentDevice(SQLModel, table=True):
    """Which arm a device runs in an A/B experiment (a stable hash, kept so the arm never changes)."""

    experiment_id: int = Field(primary_key=True)
    device_id: str = Field(primary_key=True, max_length=64)
    arm: str = Field(max_length=32)


class ExperimentWindow(SQLModel, table=True):
    """One device's telemetry window for one role while an experiment on its cohort is active (written at ingest)."""

    __table_args__ = (Index("ix_experimentwindow_experiment_device", "experiment_id", "device_id"),)
    id: int | None = Field(default=None, primary_key=True)
    experiment_id: int
    device_id: str = Field(max_length=64)
    window_start: int = Field(sa_type=BigInteger)
    role: str = Field(max_length=40)
    model: str = Field(max_length=128)
    version: int
    count: int = 0
    errors: int = 0
    labels: int = 0
    correct: int = 0
    latency_ms_sum: float = 0.0


# --- pipeline: retraining runs and the policy's decisions (controller.pipeline) --------


class PipelineRun(SQLModel, table=True):
    """One retraining run of a model, from the decision that started it to registration and rollout."""

    id: int | None = Field(default=None, primary_key=True)
    model: str = Field(max_length=128, index=True)
    cohort: str = Field(default="", max_length=64)  # the cohort whose trigger started it ("" for the fleet)
    trigger: str = Field(max_length=16)  # drift | accuracy | data | schedule | manual
    state: str = Field(max_length=16, index=True)  # running | refused | not_blessed | failed | registered | rolled_out
    runner: str = Field(default="inprocess", max_length=16)  # inprocess | kubernetes
    reason: str = Field(default="", max_length=4096)
    spec: dict[str, Any] = Field(default_factory=dict, sa_column=Column(JSON, nullable=False))  # RunSpec
    dataset_sha256: str = Field(default="", max_length=64)
    version: int | None = None  # the version registered (blessed runs)
    parent_version: int | None = None
    result: dict[str, Any] = Field(default_factory=dict, sa_column=Column(JSON, nullable=False))  # gate, evaluation, metrics
    rollout_id: int | None = None
    progress: str = Field(default="", max_length=1024)  # the last progress line
    started_at: float = 0.0  # unix seconds
    finished_at: float | None = None


class PipelineDecision(SQLModel, table=True):
    """A decision of the retraining policy (retrain or not) with its evidence (also in the audit log)."""

    __table_args__ = (Index("ix_pipelinedecision_model_cohort_at", "model", "cohort", "at"),)
    id: int | None = Field(default=None, primary_key=True)
    model: str = Field(max_length=128)
    cohort: str = Field(max_length=64)
    at: float  # unix seconds
    decision: str = Field(max_length=16)  # retrain | skip | hold
    trigger: str = Field(default="", max_length=16)  # what fired ("" when nothing did)
    reason: str = Field(default="", max_length=4096)
    evidence: dict[str, Any] = Field(default_factory=dict, sa_column=Column(JSON, nullable=False))
    run_id: int | None = None
    actor: str = Field(default="leader", max_length=128)
    audit_seq: int = 0

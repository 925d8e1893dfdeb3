"""Database tables (SQLModel) and the API's public shapes.

Tables change only through an Alembic migration (controller/migrations/);
``alembic revision --autogenerate`` diffs this module against the database.
"""

from __future__ import annotations

from datetime import datetime, timezone
from typing import Any

from pydantic import field_validator
from sqlalchemy import JSON, BigInteger, Column, Index, UniqueConstraint
from sqlmodel import Field, SQLModel

from controller.core.roles import Role


def utcnow() -> datetime:
    return datetime.now(timezone.utc)


# --- tables --------------------------------------------------------------------


class Device(SQLModel, table=True):
    id: str = Field(primary_key=True, max_length=64)
    arch: str = Field(default="", max_length=32)
    hardware_class: str = Field(default="", max_length=64, index=True)
    region: str = Field(default="", max_length=64, index=True)
    tags: list[str] = Field(default_factory=list, sa_column=Column(JSON, nullable=False))
    hardware: dict[str, Any] = Field(default_factory=dict, sa_column=Column(JSON, nullable=False))
    desired_counter: int = 0
    desired: dict[str, Any] = Field(default_factory=dict, sa_column=Column(JSON, nullable=False))
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
    id: int | None = Field(default=None, primary_key=True)
    device_id: str = Field(index=True, max_length=64)
    seq: int = Field(sa_type=BigInteger)
    kind: str = Field(max_length=64)
    severity: str = Field(max_length=16)
    message: str = ""
    detail: dict[str, Any] = Field(default_factory=dict, sa_column=Column(JSON, nullable=False))
    received_at: datetime = Field(default_factory=utcnow)


class TelemetryCursor(SQLModel, table=True):
    """Per-device dedupe state for telemetry: the highest seq merged and a bitmap of
    the ``DEDUPE_WINDOW`` seqs below it (bit i set: seq ``high_seq - i`` was merged)."""

    device_id: str = Field(primary_key=True, max_length=64)
    high_seq: int = Field(sa_type=BigInteger)
    seen_bits: int = Field(sa_type=BigInteger)


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


# --- API shapes ------------------------------------------------------------------


class ErrorMessage(SQLModel):
    """Every error the handlers raise: what was wrong and, where useful, what to do."""

    detail: str


class ValidationErrorItem(SQLModel):
    loc: list[str | int]
    msg: str
    type: str


class ValidationErrors(SQLModel):
    """Request validation errors found by FastAPI before a handler runs."""

    detail: list[ValidationErrorItem]


_TAG = r"^[A-Za-z0-9][A-Za-z0-9._:=-]{0,63}$"
_LABEL = r"^[A-Za-z0-9._-]{0,64}$"


def _check_tags(tags: list[str]) -> list[str]:
    import re

    for t in tags:
        if not re.match(_TAG, t):
            raise ValueError(f"invalid tag {t!r}: expected 1-64 of letters, digits, '.', '_', ':', '=', '-'")
    return sorted(set(tags))


class DeviceCreate(SQLModel):
    id: str = Field(max_length=64)
    arch: str = Field(default="", max_length=32, schema_extra={"pattern": _LABEL})
    hardware_class: str = Field(default="", max_length=64, schema_extra={"pattern": _LABEL})
    region: str = Field(default="", max_length=64, schema_extra={"pattern": _LABEL})
    tags: list[str] = Field(default_factory=list, max_length=64)

    @field_validator("tags")
    @classmethod
    def _tags(cls, v: list[str]) -> list[str]:
        return _check_tags(v)


class DeviceUpdate(SQLModel):
    hardware_class: str | None = Field(default=None, max_length=64, schema_extra={"pattern": _LABEL})
    region: str | None = Field(default=None, max_length=64, schema_extra={"pattern": _LABEL})
    tags: list[str] | None = Field(default=None, max_length=64)

    @field_validator("tags")
    @classmethod
    def _tags(cls, v: list[str] | None) -> list[str] | None:
        return None if v is None else _check_tags(v)


class DevicePublic(SQLModel):
    id: str
    arch: str
    hardware_class: str
    region: str
    tags: list[str]
    hardware: dict[str, Any]
    online: bool
    agent_version: str
    last_seen: datetime | None
    desired: dict[str, Any]
    actual: dict[str, Any]


class AssignmentRequest(SQLModel):
    model: str = Field(max_length=128)
    version: int = Field(ge=1, le=2**31 - 1)
    role: str = Field(default="production", max_length=40)
    reason: str = Field(default="", max_length=4096)


class ModelVersionPublic(SQLModel):
    name: str
    version: int
    label: str
    runtime: str
    sha256: str
    length: int
    parent_version: int | None
    registered_by: str
    approved_by: str | None
    approved_at: datetime | None
    revoked: bool
    created_at: datetime


class ModelVersionDetail(ModelVersionPublic):
    lineage: dict[str, Any]
    latency_budget_ms: float
    hardware: dict[str, Any]


class ModelSummary(SQLModel):
    name: str
    latest: int
    floor: int
    aliases: dict[str, int]
    versions: list[ModelVersionPublic]


class AliasRequest(SQLModel):
    version: int = Field(ge=1, le=2**31 - 1)
    reason: str = Field(default="", max_length=4096)


class ReasonRequest(SQLModel):
    reason: str = Field(default="", max_length=4096)


class ApprovalRequest(SQLModel):
    model: str = Field(max_length=128)
    version: int = Field(ge=1, le=2**31 - 1)
    reason: str = Field(min_length=1, max_length=4096)


class CohortFilter(SQLModel):
    """Dynamic membership: every given criterion must hold (empty = no constraint)."""

    hardware_class: list[str] = Field(default_factory=list, max_length=64)
    region: list[str] = Field(default_factory=list, max_length=64)
    tags: list[str] = Field(default_factory=list, max_length=64)  # device has all of these
    agent_version: str = Field(default="", max_length=64)  # e.g. ">=0.2.0", "==0.1.0", "<1"

    @field_validator("agent_version")
    @classmethod
    def _version_spec(cls, v: str) -> str:
        from controller.cohorts import parse_version_spec

        if v:
            parse_version_spec(v)
        return v


class CohortCreate(SQLModel):
    name: str = Field(max_length=64, schema_extra={"pattern": r"^[a-z0-9][a-z0-9._-]{0,63}$"})
    description: str = Field(default="", max_length=1024)
    members: list[str] = Field(default_factory=list, max_length=100_000)
    filter: CohortFilter | None = None


class CohortUpdate(SQLModel):
    description: str | None = Field(default=None, max_length=1024)
    members: list[str] | None = Field(default=None, max_length=100_000)
    filter: CohortFilter | None = None


class CohortPublic(SQLModel):
    name: str
    description: str
    members: list[str]
    filter: dict[str, Any]
    size: int


class TokenCreate(SQLModel):
    principal: str = Field(max_length=64, schema_extra={"pattern": r"^[A-Za-z0-9][A-Za-z0-9._@-]{0,63}$"})
    role: Role
    label: str = Field(default="", max_length=128)


class TokenPublic(SQLModel):
    id: int
    principal: str
    role: str
    label: str
    created_by: str
    created_at: datetime
    revoked_at: datetime | None


class TokenCreated(TokenPublic):
    token: str  # shown once


class Whoami(SQLModel):
    principal: str
    role: str


class AuditPublic(SQLModel):
    seq: int
    at: str
    actor: str
    action: str
    subject: str
    reason: str
    evidence: dict[str, Any]
    prev_hash: str
    hash: str


class AuditVerification(SQLModel):
    ok: bool
    entries: int
    head_seq: int
    head_hash: str
    problems: list[str]


class RoleState(SQLModel):
    """What ran in one role of one device at a point in time, and who decided it."""

    device_id: str
    role: str
    model: str | None
    version: int | None
    sha256: str | None
    running_since: str | None  # when the controller learned it (ISO 8601)
    reason: str
    desired_model: str | None
    desired_version: int | None
    decided_by: str | None
    decided_at: str | None
    decision_reason: str | None
    decision_audit_seq: int | None


class StateAt(SQLModel):
    at: str
    devices: list[RoleState]


class EventPublic(SQLModel):
    device_id: str
    seq: int
    kind: str
    severity: str
    message: str
    detail: dict[str, Any]
    received_at: datetime


# --- identity ------------------------------------------------------------------
# Device enrolment and certificates (issue 6; controller/enrolment.py). Tables:
# enrolmenttoken, devicecertificate. Kept together at the end for the migration.


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


class EnrolmentTokenCreate(SQLModel):
    device_id: str = Field(max_length=64)
    ttl_s: int = Field(default=24 * 3600, ge=60, le=30 * 24 * 3600)


class EnrolmentTokenPublic(SQLModel):
    device_id: str
    token: str  # shown once
    expires_at: datetime


class EnrolRequest(SQLModel):
    token: str = Field(max_length=128)
    csr: str = Field(max_length=16_384)


class RenewRequest(SQLModel):
    certificate: str = Field(max_length=16_384)
    csr: str = Field(max_length=16_384)


class CertificatePublic(SQLModel):
    device_id: str
    serial: str
    not_before: datetime
    not_after: datetime
    certificate: str
    ca_certificate: str


class RevocationPublic(SQLModel):
    device_id: str
    revoked_serials: list[str]
    broker_reloaded: bool  # the CRL was written and the broker signalled
    kicked: bool  # the live session was dropped through the broker's admin channel


class ActualChangePublic(SQLModel):
    device_id: str
    role: str
    at: str
    model: str | None
    version: int | None
    sha256: str | None
    since: float | None
    reason: str


class TelemetryWindow(SQLModel):
    model: str
    version: int
    role: str
    cohort: str
    window_start: int
    window_s: int
    windows: int
    count: int
    errors: int
    p50_ms: float | None
    p95_ms: float | None
    p99_ms: float | None
    summary: dict[str, Any]

"""Database tables (SQLModel) and the API's public shapes."""

from __future__ import annotations

from datetime import datetime, timezone
from typing import Any

from sqlalchemy import JSON, Column, UniqueConstraint
from sqlmodel import Field, SQLModel


def utcnow() -> datetime:
    return datetime.now(timezone.utc)


class Device(SQLModel, table=True):
    id: str = Field(primary_key=True, max_length=64)
    arch: str = Field(default="", max_length=32)
    desired_counter: int = 0
    desired: dict[str, Any] = Field(default_factory=dict, sa_column=Column(JSON, nullable=False))
    actual: dict[str, Any] = Field(default_factory=dict, sa_column=Column(JSON, nullable=False))
    online: bool = False
    agent_version: str = ""
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
    created_at: datetime = Field(default_factory=utcnow)


class DeviceEvent(SQLModel, table=True):
    id: int | None = Field(default=None, primary_key=True)
    device_id: str = Field(index=True, max_length=64)
    seq: int
    kind: str = Field(max_length=64)
    severity: str = Field(max_length=16)
    message: str = ""
    detail: dict[str, Any] = Field(default_factory=dict, sa_column=Column(JSON, nullable=False))
    received_at: datetime = Field(default_factory=utcnow)


# --- API shapes --------------------------------------------------------------


class DeviceCreate(SQLModel):
    id: str = Field(max_length=64)
    arch: str = Field(default="", max_length=32)


class DevicePublic(SQLModel):
    id: str
    arch: str
    online: bool
    agent_version: str
    last_seen: datetime | None
    desired: dict[str, Any]
    actual: dict[str, Any]


class AssignmentRequest(SQLModel):
    model: str = Field(max_length=128)
    version: int = Field(ge=1)
    role: str = Field(default="production", max_length=40)


class ModelVersionPublic(SQLModel):
    name: str
    version: int
    label: str
    runtime: str
    sha256: str
    length: int
    created_at: datetime


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

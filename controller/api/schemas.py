"""The HTTP API's public shapes: request bodies and responses (tables are in ``controller.core.tables``)."""

from __future__ import annotations

from datetime import datetime
from typing import Any

from pydantic import field_validator
from sqlmodel import Field, SQLModel

from controller.core.roles import Role
from controller.fleet.cohorts import parse_version_spec


class FieldProblem(SQLModel):
    """One invalid field of a request: ``field`` (e.g. ``tags[0]``) and what is wrong with it."""

    field: str
    problem: str
    loc: list[str | int]
    type: str


class Problem(SQLModel):
    """RFC 9457 problem details: the one shape of every 4xx/5xx answer (``application/problem+json``)."""

    type: str = Field(default="about:blank", description="a URI naming the problem; about:blank: see status and title")
    title: str = Field(description="the HTTP status phrase", schema_extra={"examples": ["Conflict"]})
    status: int = Field(description="the HTTP status code", schema_extra={"examples": [409]})
    detail: str = Field(
        description="what was wrong and, where useful, what to do",
        schema_extra={"examples": ["digits v3 is not approved; approve it before assigning it beyond canary"]},
    )
    instance: str | None = Field(default=None, description="the request path", schema_extra={"examples": ["/v1/approvals"]})
    errors: list[FieldProblem] | None = Field(default=None, description="request validation errors, one per field")


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
    desired_counter: int = 0  # counter of the last signed desired state
    desired_expires_at: float = 0.0  # unix seconds it lapses; the leader re-signs well before
    sampling: dict[str, Any] = Field(
        default_factory=dict,
        description="settings signed with its desired state: shadow_rate, telemetry_fresh (who asks for fresh telemetry)",
    )
    actual: dict[str, Any]
    why: str = Field(default="", description="empty when the device runs what it should; else why not (offline, its last error)")


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


class ApprovalPublic(ModelVersionPublic):
    evidence: dict[str, Any] | None = None  # a pipeline-made version: its evaluation against the incumbent, per slice


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
    ttl_s: int | None = Field(default=None, ge=1, le=10 * 366 * 86400, description="seconds until the token expires")


class TokenPublic(SQLModel):
    id: int
    principal: str
    role: str
    label: str
    created_by: str
    created_at: datetime
    revoked_at: datetime | None
    expires_at: datetime | None = None


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


# --- offline release signing -------------------------------------------------------


class PendingTargetsPublic(SQLModel):
    version: int  # the targets version that will be published
    targets: dict[str, Any]  # the TUF targets metadata to sign (``signed``) with the signatures so far
    changes: list[str]  # what changed since the published targets, oldest first
    signed_by: list[str]  # key ids of the valid signatures so far
    threshold: int  # signatures needed (root's targets threshold)
    published: bool = False  # true in the answer to the signature that met the threshold


class TufRolePublic(SQLModel):
    version: int
    expires_at: datetime
    expires_in_s: float  # negative: lapsed


class TufStatusPublic(SQLModel):
    release_signing: str  # online | offline
    roles: dict[str, TufRolePublic]  # root, targets, snapshot, timestamp as published
    targets_warning: str | None  # offline release keys: targets lapse soon, sign the pending renewal
    pending_version: int | None  # the targets version waiting for release signatures


class ReleaseSignature(SQLModel):
    version: int = Field(ge=1, description="the pending targets version the signature is for")
    keyid: str = Field(min_length=1, max_length=128)
    sig: str = Field(min_length=1, max_length=1024, regex=r"^[0-9a-f]+$")


# --- monitoring ---------------------------------------------------------------------


class FeatureDriftPublic(SQLModel):
    name: str
    n_ref: int
    n_cur: int
    psi: float
    psi_threshold: float
    js: float
    js_threshold: float
    wasserstein: float
    wasserstein_threshold: float
    out_of_range: float
    drifted: bool
    verdict: str


class PredictionDriftPublic(SQLModel):
    n_ref: int
    n_cur: int
    psi: float
    js: float
    chi2: float | None
    chi2_p: float | None
    cramers_v: float | None
    drifted: bool
    verdict: str


class VersionDriftPublic(SQLModel):
    model: str
    version: int
    cohort: str
    role: str
    since: int  # first window start merged
    until: int  # last window start merged
    windows: int
    device_windows: int
    excluded_windows: int
    reference: str  # manifest | period
    drifted_features: int
    drift_share: float
    dataset_drift: bool
    thresholds: dict[str, float]
    features: list[FeatureDriftPublic]
    predictions: PredictionDriftPublic | None
    quality: list[dict[str, Any]]


class WindowAccuracyPublic(SQLModel):
    version: int
    window_start: int
    predictions: int
    labels: int
    correct: int
    accuracy: float | None
    estimated: float | None
    estimated_stderr: float | None


class AccuracyPublic(SQLModel):
    model: str
    cohort: str
    role: str
    predictions: int
    labels: int
    correct: int
    accuracy: float | None
    estimated: float | None
    windows: list[WindowAccuracyPublic]


class LabelItem(SQLModel):
    device_id: str = Field(max_length=64)
    prediction_id: str = Field(min_length=1, max_length=64)
    label: int = Field(ge=0, le=2**31 - 1)
    predicted: int = Field(ge=0, le=2**31 - 1, description="the class the model predicted (from the predict answer)")
    model: str = Field(max_length=128)
    version: int = Field(ge=1, le=2**31 - 1)
    predicted_at: float = Field(ge=0, le=2**40, description="unix seconds of the prediction")
    role: str = Field(default="production", max_length=40)


class LabelBatch(SQLModel):
    labels: list[LabelItem] = Field(min_length=1, max_length=10_000)


class LabelsStored(SQLModel):
    stored: int


class BurnRuleIn(SQLModel):
    long_s: int = Field(ge=1, le=90 * 86400)
    short_s: int = Field(ge=1, le=90 * 86400)
    factor: float = Field(gt=0, le=10_000)
    severity: str = Field(default="page", schema_extra={"pattern": "^(page|ticket)$"})


class SloIn(SQLModel):
    model: str = Field(max_length=128)
    cohort: str = Field(default="*", max_length=64)
    kind: str = Field(schema_extra={"pattern": "^(accuracy|latency|availability|errors)$"})
    target: float = Field(gt=0, lt=1, description="share of good events, e.g. 0.99")
    threshold_ms: float | None = Field(default=None, gt=0, le=3_600_000, description="latency objectives: slow above this")
    windows: list[BurnRuleIn] = Field(default_factory=list, max_length=8, description="burn-rate rules; empty: the defaults")


class SloPublic(SloIn):
    name: str


class SloStatus(SQLModel):
    name: str
    kind: str
    model: str
    cohort: str
    target: float
    firing: bool
    severity: str | None
    summary: str | None
    evidence: dict[str, Any] | None


class AlertPublic(SQLModel):
    id: int
    key: str
    kind: str
    model: str
    cohort: str
    severity: str
    state: str
    summary: str
    evidence: dict[str, Any]
    opened_at: float
    updated_at: float
    resolved_at: float | None


# --- rollouts -------------------------------------------------------------------------


class RolloutCreate(SQLModel):
    cohort: str = Field(max_length=64)
    model: str = Field(max_length=128)
    version: int = Field(ge=1, description="the candidate version")
    baseline_version: int | None = Field(default=None, ge=1, description="default: what the cohort runs in production now")
    stages: list[dict[str, Any]] | None = Field(
        default=None,
        max_length=32,
        description="default: shadow 5% then canary 1%, 5%, 25%, 50%, 100%; fields in controller/rollouts/plan.py Stage",
    )
    thresholds: dict[str, Any] | None = Field(default=None, description="overrides of controller/rollouts/plan.py Thresholds")
    reason: str = Field(default="", max_length=1024)


class RolloutAction(SQLModel):
    reason: str = Field(default="", max_length=1024)


class RolloutRebase(SQLModel):
    version: int = Field(ge=1, le=2**31 - 1, description="the new baseline: a version the devices may install")
    reason: str = Field(default="", max_length=1024)


class RolloutDecisionPublic(SQLModel):
    at: str
    stage: int
    actor: str
    action: str
    verdict: str
    reason: str
    evidence: dict[str, Any]
    audit_seq: int


class RolloutPublic(SQLModel):
    id: int
    cohort: str
    model: str
    candidate_version: int
    baseline_version: int
    state: str  # RUNNING | PAUSED | HALTED | COMPLETED | ROLLED_BACK
    stage: int  # 1-based
    stage_kind: str
    stage_share: float
    waiting: str  # while PAUSED: operator | check | approval | human | baseline; while HALTED: baseline
    stage_passed: bool
    reason: str
    stages: list[dict[str, Any]]
    thresholds: dict[str, Any]
    stage_started_at: float
    deadline_at: float
    created_by: str
    created_at: float
    devices: dict[str, int]  # on_candidate, reverted, skipped_hardware
    last_analysis: dict[str, Any]
    decisions: list[RolloutDecisionPublic] = Field(default_factory=list)


# --- experiments -------------------------------------------------------------------


class ArmIn(SQLModel):
    name: str = Field(regex=r"^[a-z0-9_-]{1,32}$")
    version: int = Field(ge=1, le=2**31 - 1)
    share: float = Field(default=1.0, gt=0, le=1000)


class ExperimentCreate(SQLModel):
    name: str = Field(min_length=1, max_length=128)
    cohort: str = Field(max_length=64)
    model: str = Field(max_length=128)
    arms: list[ArmIn] = Field(min_length=2, max_length=8)
    kind: str = Field(default="ab", description="ab (each device runs one arm) | bandit (every device runs every arm)")
    control: str = Field(default="", max_length=32, description="the arm others are compared with; default the first")
    primary_metric: str = Field(default="accuracy", description="accuracy | error_rate | latency_ms")
    guardrails: list[str] = Field(default_factory=list, max_length=3)
    alpha: float = Field(default=0.05, gt=0, lt=0.5)
    tau: float | None = Field(default=None, gt=0, le=1e6, description="mixing sd: the effect size the test is tuned for")
    min_devices: int = Field(default=5, ge=2, le=1_000_000)
    floor: float = Field(default=0.05, ge=0, lt=0.5, description="bandit: minimum weight per arm")
    auto_promote: bool = True
    seed: int | None = Field(default=None, ge=0, le=2**31 - 1)
    reason: str = Field(default="", max_length=4096)


class ExperimentAction(SQLModel):
    action: str = Field(description="pause | resume | stop | promote")
    arm: str = Field(default="", max_length=32, description="promote: the arm that becomes production")
    reason: str = Field(default="", max_length=4096)


class ExperimentPublic(SQLModel):
    id: int
    name: str
    kind: str
    cohort: str
    model: str
    arms: list[dict[str, Any]]
    control: str
    primary_metric: str
    guardrails: list[str]
    alpha: float
    tau: float | None
    min_devices: int
    floor: float
    auto_promote: bool
    state: str
    weights: dict[str, float]
    weights_version: int
    looks: int
    evaluation: dict[str, Any]
    decision: dict[str, Any]
    reason: str
    created_by: str
    created_at: datetime
    ended_at: datetime | None


# --- pipeline ----------------------------------------------------------------------


class PipelineRunCreate(SQLModel):
    model: str = Field(max_length=128)
    cohort: str = Field(default="*", max_length=64, description="the cohort the run is for; * for the whole fleet")
    reason: str = Field(min_length=1, max_length=1024, description="why (recorded with the decision)")


class PipelineRunPublic(SQLModel):
    id: int
    model: str
    cohort: str
    trigger: str
    state: str  # running | refused | not_blessed | failed | registered | approved | rolled_out
    runner: str
    reason: str
    dataset_sha256: str
    version: int | None
    parent_version: int | None
    rollout_id: int | None
    started_at: float
    finished_at: float | None
    spec: dict[str, Any] = Field(default_factory=dict)
    result: dict[str, Any] = Field(default_factory=dict)  # gate, evaluation, metrics, lineage, steps
    progress: list[str] = Field(default_factory=list)  # the run's latest progress lines


class PipelineDecisionPublic(SQLModel):
    id: int
    model: str
    cohort: str
    at: float
    decision: str  # retrain | skip | none
    trigger: str
    reason: str
    evidence: dict[str, Any]
    run_id: int | None
    actor: str
    audit_seq: int


class PipelinePolicyPublic(SQLModel):
    enabled: bool
    interval_s: float
    runner: str
    window_s: float
    min_device_samples: int
    policy: dict[str, Any]  # controller/pipeline/policy.py PolicyConfig
    training: dict[str, Any]
    bless: dict[str, Any]


class BatchFeatureSet(SQLModel):
    """Set a batch feature's value for a device, a cohort or the fleet, from now (or a later time)."""

    name: str = Field(max_length=64, schema_extra={"pattern": r"^[A-Za-z_][A-Za-z0-9_.-]{0,63}$", "examples": ["dark_level"]})
    value: float = Field(description="a finite number")
    scope: str = Field(
        max_length=200, description="device:<id>, cohort:<name> or fleet", schema_extra={"examples": ["device:cam-7"]}
    )
    valid_from: datetime | None = Field(default=None, description="when it takes effect (default now; never in the past)")
    valid_to: datetime | None = Field(default=None, description="when it ends (exclusive; default: until a newer value)")
    reason: str = Field(default="", max_length=1024)


class BatchFeatureEnd(SQLModel):
    """End a batch-feature value now or at a later time (never in the past)."""

    at: datetime | None = Field(default=None, description="when it ends (default now)")
    reason: str = Field(default="", max_length=1024)


class BatchFeaturePublic(SQLModel):
    id: int
    name: str
    scope: str
    value: float
    valid_from: datetime
    valid_to: datetime | None
    recorded_at: datetime
    set_by: str
    reason: str
    audit_seq: int
    delivered_to: int | None = Field(default=None, description="on set: devices whose signed desired state now carries it")

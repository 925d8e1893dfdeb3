"""What each console page shows, gathered from the database (no HTML here)."""

from __future__ import annotations

from collections import Counter, defaultdict
from dataclasses import dataclass, field
from typing import Any

from sqlmodel import Session, col, select

from controller.core.tables import (
    ActualChange,
    AuditEntry,
    Cohort,
    Device,
    DeviceEvent,
    ModelVersion,
    Rollout,
    RolloutDecision,
    TelemetryAggregate,
)
from controller.fleet import convergence
from controller.fleet.cohorts import members
from controller.release.registry import Registry
from controller.telemetry.aggregate import merge_many
from shared.telemetry import MergeError, percentile_ms

MAX_DEVICES = 5000  # the overview reads at most this many devices


def running(slot: dict[str, Any] | None) -> str:
    return f"{slot['model']} v{slot['version']}" if slot else "-"


@dataclass
class Overview:
    total: int
    online: int
    not_converged: list[tuple[Device, str]]
    versions: dict[str, Counter[str]]  # cohort (or "all devices") -> "model vN" -> devices running it in production
    truncated: bool = False


def overview(session: Session) -> Overview:
    devices = list(session.exec(select(Device).order_by(col(Device.id)).limit(MAX_DEVICES + 1)).all())
    truncated = len(devices) > MAX_DEVICES
    devices = devices[:MAX_DEVICES]
    why = convergence.reasons(session, devices)
    by_id = {d.id: d for d in devices}
    versions: dict[str, Counter[str]] = {"all devices": Counter(running(d.actual.get("production")) for d in devices)}
    for c in session.exec(select(Cohort).order_by(col(Cohort.name))).all():
        versions[c.name] = Counter(running(by_id[i].actual.get("production")) for i in members(session, c) if i in by_id)
    stuck = [(d, why[d.id]) for d in devices if why.get(d.id)]
    return Overview(len(devices), sum(d.online for d in devices), stuck, versions, truncated)


@dataclass
class DevicePage:
    device: Device
    why: str
    roles: list[tuple[str, str, str, str]]  # role, desired, actual, reason of the actual slot
    history: list[ActualChange]
    events: list[DeviceEvent]


def device_page(session: Session, device: Device) -> DevicePage:
    roles = sorted(set(device.desired) | set(device.actual))
    rows = [
        (r, running(device.desired.get(r)), running(device.actual.get(r)), str((device.actual.get(r) or {}).get("reason", "")))
        for r in roles
    ]
    history = session.exec(
        select(ActualChange).where(ActualChange.device_id == device.id).order_by(col(ActualChange.id).desc()).limit(50)
    ).all()
    events = session.exec(
        select(DeviceEvent).where(DeviceEvent.device_id == device.id).order_by(col(DeviceEvent.id).desc()).limit(50)
    ).all()
    return DevicePage(device, convergence.reasons(session, [device]).get(device.id, ""), rows, list(history), list(events))


@dataclass
class ModelFamily:
    name: str
    floor: int
    aliases: dict[str, int]
    versions: list[ModelVersion] = field(default_factory=list)  # newest first

    def lineage(self, mv: ModelVersion) -> list[int]:
        """Parent chain of ``mv`` among the registered versions (newest first, ``mv`` excluded)."""
        by_v = {v.version: v for v in self.versions}
        chain, seen, p = [], {mv.version}, mv.parent_version
        while p is not None and p in by_v and p not in seen:
            chain.append(p)
            seen.add(p)
            p = by_v[p].parent_version
        return chain


def registry(session: Session) -> list[ModelFamily]:
    families: dict[str, ModelFamily] = {}
    for mv in session.exec(select(ModelVersion).order_by(col(ModelVersion.name), col(ModelVersion.version).desc())).all():
        fam = families.get(mv.name)
        if fam is None:
            fam = families[mv.name] = ModelFamily(mv.name, Registry.floor(session, mv.name), Registry.aliases(session, mv.name))
        fam.versions.append(mv)
    return list(families.values())


def audit_entries(session: Session, subject: str | None, limit: int = 100) -> list[AuditEntry]:
    q = select(AuditEntry).order_by(col(AuditEntry.seq).desc()).limit(limit)
    if subject:
        q = q.where(AuditEntry.subject == subject)
    return list(session.exec(q).all())


def latency_series(session: Session, model: str, cohort: str) -> dict[str, Any]:
    """Per window and version: merged p95 latency (ms) and inference count, as uPlot's columnar data."""
    rows = session.exec(
        select(TelemetryAggregate).where(TelemetryAggregate.model == model, TelemetryAggregate.cohort == cohort)
    ).all()
    groups: dict[tuple[int, int], list[dict[str, Any]]] = defaultdict(list)
    for r in rows:
        groups[(r.window_start, r.version)].append(r.summary)
    p95: dict[tuple[int, int], float | None] = {}
    counts: dict[tuple[int, int], int] = {}
    for key, summaries in groups.items():
        try:
            merged = merge_many(summaries)
        except MergeError:
            merged = max(summaries, key=lambda s: int(s.get("count", 0) or 0))
        lat = merged.get("latency_ms")
        ok = isinstance(lat, list) and bool(lat) and all(isinstance(x, int) for x in lat)
        p95[key] = percentile_ms(lat, 0.95) if ok else None
        counts[key] = int(merged.get("count", 0) or 0)
    windows = sorted({w for w, _ in groups})
    versions = sorted({v for _, v in groups})
    return {
        "x": windows,
        "series": [{"label": f"v{v} p95 ms", "values": [p95.get((w, v)) for w in windows]} for v in versions],
        "counts": [sum(counts.get((w, v), 0) for v in versions) for w in windows],
    }


@dataclass
class RolloutRow:
    rollout: Rollout
    decisions: list[RolloutDecision]


def rollouts(session: Session, limit: int = 50) -> list[RolloutRow]:
    """Newest rollouts first, each with its last decisions (what the engine decided and why)."""
    rows = session.exec(select(Rollout).order_by(col(Rollout.id).desc()).limit(limit)).all()
    out = []
    for r in rows:
        q = select(RolloutDecision).where(RolloutDecision.rollout_id == r.id).order_by(col(RolloutDecision.id).desc()).limit(10)
        out.append(RolloutRow(r, list(session.exec(q).all())))
    return out

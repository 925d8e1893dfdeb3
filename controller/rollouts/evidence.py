"""What a stage observed, read from the database: per-device sums, rollbacks, presence.

Per-device telemetry comes from ``rolloutwindow`` rows (written at ingest for
devices of a running rollout's cohort). Both arms are read over the same
windows: those that started once the stage had begun, so a stage is judged
only on what happened during it.
"""

from __future__ import annotations

from collections.abc import Iterable
from datetime import timezone
from typing import Any

from sqlmodel import Session, col, select

from controller.core.tables import Device, DeviceEvent, Rollout, RolloutDevice, RolloutWindow
from controller.rollouts.analysis import Observation, Unit
from controller.rollouts.plan import SHADOW, Stage

ROLLED_BACK, REJECTED = "ota.rolled_back", "ota.rejected"


def _add(acc: dict[str, Any], s: dict[str, Any]) -> None:
    acc["count"] += int(s.get("count", 0))
    acc["errors"] += int(s.get("errors", 0))
    labels, shadow = s.get("labels") or {}, s.get("shadow") or {}
    acc["labels"] += int(labels.get("count", 0))
    acc["correct"] += int(labels.get("correct", 0))
    acc["agree"] += int(shadow.get("agree", 0))
    acc["disagree"] += int(shadow.get("disagree", 0))
    acc["dropped"] += int(shadow.get("dropped", 0))
    acc["sampled_out"] += int(shadow.get("sampled_out", 0))
    cm = s.get("confusion") or []
    if cm and not acc["confusion"]:
        acc["confusion"] = [[0] * len(cm) for _ in cm]
    if cm and len(cm) == len(acc["confusion"]):
        acc["confusion"] = [[a + b for a, b in zip(ra, rb, strict=True)] for ra, rb in zip(acc["confusion"], cm, strict=True)]
    for key in ("latency_ms", "predictions"):
        vals = s.get(key) or []
        if not acc[key]:
            acc[key] = [0] * len(vals)
        if len(vals) == len(acc[key]):
            acc[key] = [a + b for a, b in zip(acc[key], vals, strict=True)]


def _empty() -> dict[str, Any]:
    return {"count": 0, "errors": 0, "labels": 0, "correct": 0, "agree": 0, "disagree": 0, "latency_ms": [], "predictions": [],
            "dropped": 0, "sampled_out": 0, "confusion": []}  # fmt: skip


def _unit(device: Device | None, device_id: str, acc: dict[str, Any]) -> Unit:
    stratum = (device.hardware_class, device.region) if device else ("", "")
    return Unit(
        device_id=device_id,
        stratum=stratum,
        count=acc["count"],
        errors=acc["errors"],
        labels=acc["labels"],
        correct=acc["correct"],
        latency_ms=tuple(acc["latency_ms"]),
        predictions=tuple(acc["predictions"]),
        agree=acc["agree"],
        disagree=acc["disagree"],
        dropped=acc["dropped"],
        sampled_out=acc["sampled_out"],
        confusion=tuple(tuple(row) for row in acc["confusion"]),
    )


def _is(s: dict[str, Any] | None, model: str, version: int) -> bool:
    return bool(s) and s.get("model") == model and s.get("version") == version  # type: ignore[union-attr]


def _seen_after(d: Device, t: float) -> bool:
    if d.last_seen is None:
        return False
    seen = d.last_seen if d.last_seen.tzinfo else d.last_seen.replace(tzinfo=timezone.utc)
    return seen.timestamp() >= t


def _events(session: Session, r: Rollout, ids: list[str], kind: str) -> list[tuple[str, float]]:
    """(device, unix time received) of the agents' ``kind`` events about the candidate since the rollout began."""
    if not ids:
        return []
    rows = session.exec(select(DeviceEvent).where(col(DeviceEvent.device_id).in_(ids), DeviceEvent.kind == kind)).all()
    out = []
    for e in rows:
        at = (e.received_at if e.received_at.tzinfo else e.received_at.replace(tzinfo=timezone.utc)).timestamp()
        if at >= r.created_at and e.detail.get("model") == r.model and e.detail.get("version") == r.candidate_version:
            out.append((e.device_id, at))
    return out


def refusals(session: Session, r: Rollout, device_ids: Iterable[str]) -> list[str]:
    """Candidate devices whose agent rolled the candidate back (its health check failed) since the rollout began."""
    return sorted({d for d, _ in _events(session, r, list(device_ids), ROLLED_BACK)})


def rejected_since(session: Session, r: Rollout, assigned_at: dict[str, float]) -> list[str]:
    """Devices that refused the candidate before installing it (download or verification) since it was assigned.

    Not a verdict on the model: the engine assigns it again (the agent discards a failed download)."""
    return sorted({d for d, at in _events(session, r, list(assigned_at), REJECTED) if at >= assigned_at[d]})


def observe(session: Session, r: Rollout, stage: Stage, members: list[Device], now: float, final: bool) -> Observation:
    """Build the stage's :class:`Observation` (candidate devices vs baseline devices, or shadow vs production)."""
    assert r.id is not None
    on_cand = {
        d.device_id: d
        for d in session.exec(select(RolloutDevice).where(RolloutDevice.rollout_id == r.id, RolloutDevice.arm == "canary")).all()
        if not d.reverted
    }
    skipped = set(
        session.exec(
            select(RolloutDevice.device_id).where(RolloutDevice.rollout_id == r.id, RolloutDevice.arm == "skipped")
        ).all()
    )
    by_id = {d.id: d for d in members}
    since = r.stage_started_at
    rows = session.exec(
        select(RolloutWindow).where(RolloutWindow.rollout_id == r.id, col(RolloutWindow.window_start) >= since)
    ).all()
    cand: dict[str, dict[str, Any]] = {}
    base: dict[str, dict[str, Any]] = {}
    for w in rows:
        prod = w.roles.get("production")
        if w.device_id in on_cand:
            if stage.kind == SHADOW:
                shadow = w.roles.get("shadow")
                if _is(shadow, r.model, r.candidate_version):
                    _add(cand.setdefault(w.device_id, _empty()), shadow)  # type: ignore[arg-type]
                    if prod:
                        _add(base.setdefault(w.device_id, _empty()), prod)
            elif _is(prod, r.model, r.candidate_version):
                _add(cand.setdefault(w.device_id, _empty()), prod)  # type: ignore[arg-type]
        elif w.device_id in by_id and w.device_id not in skipped and _is(prod, r.model, r.baseline_version):
            _add(base.setdefault(w.device_id, _empty()), prod)  # type: ignore[arg-type]
    baseline_ids = [d for d in by_id if d not in on_cand and d not in skipped]
    # Offline devices are counted apart; a device that went offline after it got the candidate
    # (or, for the baseline, during the stage) counts against its arm.
    cand_devices = [(by_id.get(d) or session.get(Device, d), row.assigned_at) for d, row in on_cand.items()]
    went_offline = sum(1 for d, at in cand_devices if d is not None and not d.online and _seen_after(d, at))
    base_offline = sum(1 for d in baseline_ids if not by_id[d].online and _seen_after(by_id[d], r.stage_started_at))
    return Observation(
        kind=stage.kind,
        elapsed_s=max(0.0, now - r.stage_started_at),
        canary=tuple(
            _unit(by_id.get(d), d, a)
            for d, a in sorted(cand.items())
            if a["count"] or a["agree"] + a["disagree"] + a["dropped"] + a["sampled_out"]
        ),
        baseline=tuple(_unit(by_id.get(d), d, a) for d, a in sorted(base.items()) if a["count"]),
        assigned=len(on_cand),
        offline=went_offline,
        offline_before=sum(1 for d, at in cand_devices if d is not None and not d.online and not _seen_after(d, at)),
        baseline_devices=len(baseline_ids),
        baseline_offline=base_offline,
        rollbacks=tuple(refusals(session, r, on_cand)),
        final=final,
        sample_rate=stage.sample_rate,
    )

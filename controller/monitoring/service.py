"""Monitoring queries: drift, accuracy and data quality of a model in a cohort over a time range.

Reads merged windows (``windows``), the registered manifests' references, and
label rows; the statistics are the pure modules'. Used by the API routes and by
the leader's jobs (``controller.monitoring.jobs``), so both see the same figures.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from sqlmodel import Session, select

from controller.core.tables import ModelVersion
from controller.monitoring.accuracy import WindowAccuracy, late_labels, overall, window_accuracy
from controller.monitoring.drift import DriftReport, Reference, ReferenceError, drift_report, reference_from_manifest
from controller.monitoring.drift import reference_from_summary as _period_reference
from controller.monitoring.estimate import calibration
from controller.monitoring.quality import DEFAULT_RULES, EXCLUDING, Flag, QualityRules, quality_flags
from controller.monitoring.stats import DEFAULT_THRESHOLDS, Thresholds
from controller.monitoring.windows import Window, load_windows, merge_windows


class NotFound(LookupError):
    """No such model version (or no reference in its manifest)."""


@dataclass(frozen=True)
class Scope:
    model: str
    cohort: str = "*"
    role: str = "production"
    since: int = 0
    until: int = 2**40
    version: int | None = None


def _manifest(session: Session, model: str, version: int) -> dict[str, Any]:
    row = session.exec(select(ModelVersion).where(ModelVersion.name == model, ModelVersion.version == version)).first()
    if row is None:
        raise NotFound(f"model {model!r} has no version {version}")
    return dict(row.manifest)


def reference_for(session: Session, model: str, version: int) -> Reference:
    try:
        return reference_from_manifest(_manifest(session, model, version).get("reference", {}))
    except ReferenceError as exc:
        raise NotFound(f"{model} v{version}: {exc}") from None


@dataclass
class VersionDrift:
    version: int
    since: int  # first and last window start included
    until: int
    windows: int
    device_windows: int
    excluded_windows: int  # left out for data-quality flags
    report: DriftReport
    quality: list[dict[str, Any]] = field(default_factory=list)


def drift(
    session: Session,
    scope: Scope,
    *,
    baseline: tuple[int, int] | None = None,
    thresholds: Thresholds = DEFAULT_THRESHOLDS,
    exclude_flagged: bool = True,
    rules: QualityRules = DEFAULT_RULES,
) -> list[VersionDrift]:
    """Drift per model version over ``scope``: against the manifest's reference, or against the
    same version's merged windows in ``baseline`` (since, until) when given."""
    windows = load_windows(
        session, scope.model, cohort=scope.cohort, role=scope.role, since=scope.since, until=scope.until, version=scope.version
    )
    by_version: dict[int, list[Window]] = {}
    for w in windows:
        by_version.setdefault(w.version, []).append(w)
    out = []
    for version, ws in sorted(by_version.items()):
        ref = reference_for(session, scope.model, version)
        kept, excluded, flags = _screen(ref, ws, rules, exclude_flagged)
        if baseline is not None:
            base = load_windows(
                session, scope.model, cohort=scope.cohort, role=scope.role, since=baseline[0], until=baseline[1], version=version
            )
            merged_base = merge_windows(_screen(ref, base, rules, exclude_flagged)[0])
            ref = _period_reference(ref, merged_base[1] if merged_base else {})
        merged = merge_windows(kept)
        report = drift_report(ref, merged[1] if merged else {}, thresholds)
        out.append(
            VersionDrift(
                version,
                ws[0].window_start,
                ws[-1].window_start,
                len(kept),
                merged[0] if merged else 0,
                excluded,
                report,
                flags,
            )
        )
    return out


def _screen(
    ref: Reference, ws: list[Window], rules: QualityRules, exclude: bool
) -> tuple[list[Window], int, list[dict[str, Any]]]:
    kept, flagged = [], []
    for w in ws:
        fl: list[Flag] = quality_flags(ref, w.summary, rules)
        if fl:
            flagged.append({"window_start": w.window_start, "flags": [f.to_dict() for f in fl]})
        if not (exclude and any(f.rule in EXCLUDING for f in fl)):
            kept.append(w)
    return kept, (len(ws) - len(kept)), flagged


def accuracy(session: Session, scope: Scope) -> tuple[list[WindowAccuracy], dict[str, float | int | None]]:
    """Per-window measured and estimated accuracy over ``scope``, and the totals."""
    windows = load_windows(
        session, scope.model, cohort=scope.cohort, role=scope.role, since=scope.since, until=scope.until, version=scope.version
    )
    late = late_labels(session, scope.model, scope.cohort, scope.role, scope.since, scope.until, scope.version)
    calib: dict[int, list[float]] = {}
    for v in {w.version for w in windows} | {v for _, v in late}:
        try:
            calib[v] = calibration(_manifest(session, scope.model, v).get("reference", {}))
        except NotFound:
            continue
    rows = window_accuracy(windows, late, calib)
    return rows, overall(rows)


def quality(session: Session, scope: Scope, rules: QualityRules = DEFAULT_RULES) -> list[dict[str, Any]]:
    """Windows in ``scope`` that break a data-quality rule, with the flags."""
    windows = load_windows(
        session, scope.model, cohort=scope.cohort, role=scope.role, since=scope.since, until=scope.until, version=scope.version
    )
    out = []
    refs: dict[int, Reference] = {}
    for w in windows:
        if w.version not in refs:
            refs[w.version] = reference_for(session, scope.model, w.version)
        fl = quality_flags(refs[w.version], w.summary, rules)
        if fl:
            out.append({"version": w.version, "window_start": w.window_start, "flags": [f.to_dict() for f in fl]})
    return out

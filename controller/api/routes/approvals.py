"""Approvals: a version must be approved before it goes beyond canary.

The approver needs the approver role and must not be who registered the version.
"""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Query, status
from sqlmodel import col, select

from controller.api.deps import Approver, RegistryDep, SessionDep, needs
from controller.api.paging import PAGED, PageDep
from controller.api.schemas import ApprovalPublic, ApprovalRequest, ModelVersionPublic
from controller.core.roles import Role
from controller.core.tables import ModelVersion, PipelineRun
from controller.pipeline.register import approval_evidence

router = APIRouter(prefix="/v1/approvals", tags=["approvals"], dependencies=[needs(Role.VIEWER)])


@router.get("", response_model=list[ApprovalPublic], responses=PAGED)
def list_approvals(
    session: SessionDep, page: PageDep, state: Annotated[str, Query(pattern=r"^(pending|approved)$")] = "pending"
) -> list[ApprovalPublic]:
    """Versions waiting for approval (``state=pending``, not revoked) or already approved; a version the
    pipeline made shows its evaluation against the incumbent as ``evidence``."""
    q = select(ModelVersion).order_by(col(ModelVersion.name), col(ModelVersion.version))
    if state == "pending":
        q = q.where(col(ModelVersion.approved_by).is_(None), col(ModelVersion.revoked).is_(False))
    else:
        q = q.where(col(ModelVersion.approved_by).is_not(None))
    out = []
    for mv in page.rows(session, q):
        item = ApprovalPublic.model_validate(mv, from_attributes=True)
        lineage = mv.manifest.get("lineage") or {}
        if isinstance(lineage, dict) and "evaluation" in lineage:
            run = session.exec(
                select(PipelineRun.id).where(PipelineRun.model == mv.name, PipelineRun.version == mv.version)
            ).first()
            item.evidence = approval_evidence(lineage, run)
        out.append(item)
    return out


@router.post("", status_code=status.HTTP_201_CREATED, response_model=ModelVersionPublic)
def approve(body: ApprovalRequest, session: SessionDep, registry: RegistryDep, me: Approver) -> ModelVersion:
    """Approve a version for use beyond canary, with the reason (recorded in the audit log)."""
    mv = registry.approve(session, body.model, body.version, me, body.reason)
    session.commit()
    session.refresh(mv)
    return mv

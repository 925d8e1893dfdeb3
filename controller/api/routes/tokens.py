"""API tokens: create (the secret is shown once), list, revoke; and ``whoami``."""

from __future__ import annotations

from datetime import datetime, timedelta, timezone

from fastapi import APIRouter, HTTPException, status
from sqlmodel import col, select

from controller.api.deps import Admin, RowId, SessionDep, Viewer
from controller.api.paging import PAGED, PageDep
from controller.api.schemas import TokenCreate, TokenCreated, TokenPublic, Whoami
from controller.core import audit
from controller.core.security import hash_token, new_token
from controller.core.tables import ApiToken

router = APIRouter(tags=["tokens"])


@router.get("/v1/whoami", response_model=Whoami)
def whoami(me: Viewer) -> Whoami:
    return Whoami(principal=me.name, role=me.role.value)


@router.post("/v1/tokens", status_code=status.HTTP_201_CREATED, response_model=TokenCreated)
def create_token(body: TokenCreate, session: SessionDep, me: Admin) -> TokenCreated:
    """Make an API token for a person or a system; only its hash is stored."""
    secret = new_token()
    expires = None if body.ttl_s is None else datetime.now(timezone.utc) + timedelta(seconds=body.ttl_s)
    row = ApiToken(
        principal=body.principal,
        role=body.role.value,
        label=body.label,
        token_hash=hash_token(secret),
        created_by=me.name,
        expires_at=expires,
    )
    session.add(row)
    session.flush()
    audit.record(
        session,
        actor=me.name,
        action="token.created",
        subject=f"principal:{body.principal}",
        evidence={
            "token_id": row.id,
            "role": body.role.value,
            "label": body.label,
            "expires_at": None if expires is None else expires.isoformat(),
        },
    )
    session.commit()
    session.refresh(row)
    return TokenCreated(**TokenPublic.model_validate(row).model_dump(), token=secret)


@router.get("/v1/tokens", response_model=list[TokenPublic], responses=PAGED)
def list_tokens(session: SessionDep, me: Admin, page: PageDep) -> list[ApiToken]:
    return page.rows(session, select(ApiToken).order_by(col(ApiToken.id)))


@router.delete("/v1/tokens/{token_id}", response_model=TokenPublic)
def revoke_token(token_id: RowId, session: SessionDep, me: Admin) -> ApiToken:
    row = session.get(ApiToken, token_id)
    if row is None:
        raise HTTPException(status.HTTP_404_NOT_FOUND, f"no API token with id {token_id}")
    if row.revoked_at is None:
        row.revoked_at = datetime.now(timezone.utc)
        session.add(row)
        audit.record(
            session, actor=me.name, action="token.revoked", subject=f"principal:{row.principal}", evidence={"token_id": row.id}
        )
        session.commit()
        session.refresh(row)
    return row

"""Data capture uploads from agents (sampled inputs, labelled ones preferred) for retraining.

``POST /v1/capture/{device_id}`` takes ``{"samples": [{"id": n, "sample": {...}}]}``
signed by that device (``shared.device_auth``: the key of a certificate issued
to it, unrevoked) and stores the batch as one JSON-lines file under
``{data_dir}/capture/{device_id}/``, named by the agent's spool id and the batch's
first and last sample id (``{spool}-{first}-{last}.jsonl``; agents before spool ids
send none: ``{first}-{last}.jsonl``) and written atomically; each line carries the
spool id, so a sample is (device, spool, id), distinct across a wiped device's
spools. A stored batch is never replaced: the same batch re-sent after a lost
answer is accepted again, a different one under the same name is refused (409;
the agent sends it again under a fresh spool id). Each device has a quota of
bytes and batches (507 when full).
``GET`` (operator token) summarises what is stored, each sample once (a prediction
captured again with its label is one sample).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated, Any

from fastapi import APIRouter, Depends, HTTPException, Request, status
from fastapi.concurrency import run_in_threadpool
from pydantic import BaseModel, Field, ValidationError
from sqlmodel import Session

from controller.api.deps import SessionDep, SettingsDep, needs
from controller.core.config import Settings
from controller.core.roles import Role
from controller.core.tables import Device
from controller.identity.device_auth import verify_request
from shared.device_auth import DeviceAuthError, parse_header
from shared.errors import ProtocolError
from shared.fsutil import atomic_write_bytes
from shared.topics import validate_device_id

router = APIRouter(prefix="/v1/capture", tags=["capture"])
MAX_UPLOAD_BYTES = 1024 * 1024  # bytes per request; the agent sends at most batch_max_bytes (256 KiB)


class CapturedSample(BaseModel):
    ts: float
    role: str = Field(max_length=40)
    model: str = Field(max_length=128)
    version: int = Field(ge=1)
    inputs: list[Any]  # what the model got
    raw: list[Any] | None = None  # the raw input the feature spec made ``inputs`` from, when the app sent raw
    prediction: int | None = None
    label: int | None = None
    prediction_id: str = Field(default="", max_length=64)  # joins labels posted later with POST /v1/labels


class CaptureItem(BaseModel):
    id: int = Field(ge=0)
    sample: CapturedSample


class CaptureUpload(BaseModel):
    spool: str | None = Field(default=None, pattern=r"^[0-9a-f]{8,32}$")  # the agent's spool id; None: an older agent
    samples: Annotated[list[CaptureItem], Field(min_length=1, max_length=10_000)]


class CaptureStored(BaseModel):
    stored: int
    file: str


class CaptureSummary(BaseModel):
    device_id: str
    samples: int
    labelled: int
    batches: int


def _device_dir(data_dir: Path, device_id: str, session: SessionDep) -> Path:
    try:
        validate_device_id(device_id)
    except ProtocolError as exc:
        raise HTTPException(status.HTTP_422_UNPROCESSABLE_CONTENT, str(exc)) from None
    if session.get(Device, device_id) is None:
        raise HTTPException(status.HTTP_404_NOT_FOUND, f"device {device_id!r} is not registered")
    return data_dir / "capture" / device_id


def device_signed(request: Request) -> None:
    """The route takes device-signed requests only: refuse at once a request without a well-formed credential
    (the signature itself is checked over the body, once it has been read within its bound)."""
    try:
        parse_header(request.headers.get("authorization"))
    except DeviceAuthError as exc:
        raise HTTPException(status.HTTP_401_UNAUTHORIZED, str(exc), headers={"WWW-Authenticate": "EdgefleetDevice"}) from None


@router.post("/{device_id}", response_model=CaptureStored, dependencies=[Depends(device_signed)])
async def upload_capture(device_id: str, request: Request, session: SessionDep, settings: SettingsDep) -> CaptureStored:
    # The body first, within its bound, with no database connection held: an upload that arrives slowly must not
    # keep one of the pool's connections (enough of them stalled every request until the pool timed out).
    body = bytearray()
    async for chunk in request.stream():
        body += chunk
        if len(body) > MAX_UPLOAD_BYTES:
            raise HTTPException(status.HTTP_413_CONTENT_TOO_LARGE, f"upload larger than {MAX_UPLOAD_BYTES} bytes")
    auth = request.headers.get("authorization")
    # The database and the files off the event loop, as every synchronous route.
    return await run_in_threadpool(store_upload, session, settings, device_id, auth, request.url.path, bytes(body))


def store_upload(
    session: Session, settings: Settings, device_id: str, authorization: str | None, path: str, body: bytes
) -> CaptureStored:
    """Check the device and its signature over ``body``, then store the batch (the route's rules, module docstring)."""
    folder = _device_dir(settings.data_dir, device_id, session)
    try:
        verify_request(session, device_id, authorization, "POST", path, body)
    except DeviceAuthError as exc:
        raise HTTPException(status.HTTP_401_UNAUTHORIZED, str(exc), headers={"WWW-Authenticate": "EdgefleetDevice"}) from None
    try:
        upload = CaptureUpload.model_validate_json(body)
    except ValidationError as exc:
        raise HTTPException(status.HTTP_422_UNPROCESSABLE_CONTENT, f"bad capture upload: {exc.errors()[:3]}") from None
    ids = [s.id for s in upload.samples]
    name = f"{min(ids):012d}-{max(ids):012d}.jsonl"
    spool = {} if upload.spool is None else {"spool": upload.spool}
    if upload.spool is not None:
        name = f"{upload.spool}-{name}"
    lines = (
        json.dumps({"id": item.id, **spool, **item.sample.model_dump()}, separators=(",", ":")) + "\n" for item in upload.samples
    )
    data = "".join(lines).encode()
    target = folder / name
    if target.exists():
        if target.read_bytes() == data:  # the same batch again (the answer to the first upload was lost)
            return CaptureStored(stored=len(upload.samples), file=name)
        raise HTTPException(status.HTTP_409_CONFLICT, f"batch {name} is already stored with other content; not replaced")
    stored = [p.stat().st_size for p in folder.glob("*.jsonl")] if folder.exists() else []
    if len(stored) + 1 > settings.capture_quota_files or sum(stored) + len(data) > settings.capture_quota_bytes:
        raise HTTPException(
            status.HTTP_507_INSUFFICIENT_STORAGE,
            f"capture quota of device {device_id!r} reached ({len(stored)} batches, {sum(stored)} bytes; "
            f"limits {settings.capture_quota_files} batches, {settings.capture_quota_bytes} bytes)",
        )
    atomic_write_bytes(target, data)
    return CaptureStored(stored=len(upload.samples), file=name)


@router.get("/{device_id}", response_model=CaptureSummary, dependencies=[needs(Role.VIEWER)])
def capture_summary(device_id: str, session: SessionDep, settings: SettingsDep) -> CaptureSummary:
    folder = _device_dir(settings.data_dir, device_id, session)
    seen: dict[tuple[str, str, int], bool] = {}  # a sample once: re-sent, or its prediction captured again with its label
    files = sorted(folder.glob("*.jsonl")) if folder.exists() else []
    for path in files:
        for line in path.read_text().splitlines():
            rec = json.loads(line)
            key = (rec["prediction_id"], "", 0) if rec.get("prediction_id") else ("", rec.get("spool", ""), rec["id"])
            seen[key] = seen.get(key, False) or rec.get("label") is not None
    return CaptureSummary(device_id=device_id, samples=len(seen), labelled=sum(seen.values()), batches=len(files))

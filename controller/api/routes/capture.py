"""Data capture uploads from agents (sampled inputs, labelled ones preferred) for retraining.

``POST /v1/capture/{device_id}`` takes ``{"samples": [{"id": n, "sample": {...}}]}``
signed by that device (``shared.device_auth``: the key of a certificate issued
to it, unrevoked) and stores the batch as one JSON-lines file under
``{data_dir}/capture/{device_id}/``, named by its first and last sample id and
written atomically. A stored batch is never replaced: the same batch re-sent
after a lost answer is accepted again, a different one under the same name is
refused (409). Each device has a quota of bytes and batches (507 when full).
``GET`` (operator token) summarises what is stored.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated, Any

from fastapi import APIRouter, Depends, HTTPException, Request, status
from pydantic import BaseModel, Field, ValidationError

from controller.api.deps import SessionDep, SettingsDep, needs
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
    inputs: list[Any]
    prediction: int | None = None
    label: int | None = None
    prediction_id: str = Field(default="", max_length=64)  # joins labels posted later with POST /v1/labels


class CaptureItem(BaseModel):
    id: int = Field(ge=0)
    sample: CapturedSample


class CaptureUpload(BaseModel):
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
    folder = _device_dir(settings.data_dir, device_id, session)
    body = bytearray()
    async for chunk in request.stream():
        body += chunk
        if len(body) > MAX_UPLOAD_BYTES:
            raise HTTPException(status.HTTP_413_CONTENT_TOO_LARGE, f"upload larger than {MAX_UPLOAD_BYTES} bytes")
    try:
        verify_request(session, device_id, request.headers.get("authorization"), "POST", request.url.path, bytes(body))
    except DeviceAuthError as exc:
        raise HTTPException(status.HTTP_401_UNAUTHORIZED, str(exc), headers={"WWW-Authenticate": "EdgefleetDevice"}) from None
    try:
        upload = CaptureUpload.model_validate_json(bytes(body))
    except ValidationError as exc:
        raise HTTPException(status.HTTP_422_UNPROCESSABLE_CONTENT, f"bad capture upload: {exc.errors()[:3]}") from None
    ids = [s.id for s in upload.samples]
    name = f"{min(ids):012d}-{max(ids):012d}.jsonl"
    lines = (json.dumps({"id": item.id, **item.sample.model_dump()}, separators=(",", ":")) + "\n" for item in upload.samples)
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
    seen: dict[int, bool] = {}
    files = sorted(folder.glob("*.jsonl")) if folder.exists() else []
    for path in files:
        for line in path.read_text().splitlines():
            rec = json.loads(line)
            seen[rec["id"]] = rec.get("label") is not None
    return CaptureSummary(device_id=device_id, samples=len(seen), labelled=sum(seen.values()), batches=len(files))

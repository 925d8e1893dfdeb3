"""Verifying device-signed HTTP requests (format in ``shared.device_auth``).

The certificate is found by serial among those this controller issued; it must
belong to the device the request is for, be unrevoked and unexpired, and its
key must verify the signature over the request. Clock skew is bounded by
``shared.device_auth.MAX_SKEW_S``.
"""

from __future__ import annotations

import datetime as dt
import time

from cryptography import x509
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec
from sqlmodel import Session

from controller.core.tables import DeviceCertificate
from shared.device_auth import MAX_SKEW_S, DeviceAuthError, parse_header, signing_input


def verify_request(
    session: Session,
    device_id: str | None,
    authorization: str | None,
    method: str,
    path: str,
    body: bytes,
    now: float | None = None,
) -> str:
    """Return the device whose certificate signed this request, or raise DeviceAuthError.

    ``device_id`` None: any enrolled device may make the request (bundle downloads).
    """
    serial, ts, sig = parse_header(authorization)
    now = time.time() if now is None else now
    if abs(now - ts) > MAX_SKEW_S:
        raise DeviceAuthError(f"device credential timestamp is {ts - now:+.0f} s from the controller's clock")
    row = session.get(DeviceCertificate, serial)
    if row is None or (device_id is not None and row.device_id != device_id):
        raise DeviceAuthError(f"certificate {serial} is not one issued to device {device_id or '(any)'!r}")
    if row.revoked_at is not None:
        raise DeviceAuthError(f"certificate {serial} is revoked")
    not_after = row.not_after if row.not_after.tzinfo else row.not_after.replace(tzinfo=dt.timezone.utc)
    if not_after.timestamp() <= now:
        raise DeviceAuthError(f"certificate {serial} has expired")
    key = x509.load_pem_x509_certificate(row.pem.encode()).public_key()
    if not isinstance(key, ec.EllipticCurvePublicKey):
        raise DeviceAuthError(f"certificate {serial} does not carry an EC key")
    try:
        key.verify(sig, signing_input(method, path, ts, body), ec.ECDSA(hashes.SHA256()))
    except InvalidSignature:
        raise DeviceAuthError("device credential signature does not verify") from None
    return row.device_id

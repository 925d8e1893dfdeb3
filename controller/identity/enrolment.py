"""Enrolment, renewal and revocation of device certificates (database + device CA).

- An operator creates a one-time token for a *registered* device; only the
  token's sha256 is stored. Unknown devices get no token, so they cannot enrol.
- A device enrols with the token and a CSR made on the device; the token is
  spent atomically (a second use, even concurrent, is refused).
- A device renews with its current, unrevoked, unexpired certificate and a CSR
  for the *same* key: the CSR's signature proves it holds that key, so a
  replayed renewal request only yields a certificate for a key the replayer
  does not have.
- Revocation marks every certificate of the device revoked and spends its
  unused tokens; the caller then installs the new CRL and kicks the device.

Errors: ``EnrolmentDenied`` (not allowed: bad token, revoked or foreign
certificate), ``UnknownDevice``, ``EnrolmentInvalid`` (malformed input).
"""

from __future__ import annotations

import datetime as dt
import hashlib
import secrets

from cryptography import x509
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import serialization
from sqlalchemy import update
from sqlmodel import Session, col, select

from controller.core.tables import Device, DeviceCertificate, EnrolmentToken
from controller.identity.pki import DeviceCA, PkiError, check_device_csr, common_name, load_csr, utcnow


class EnrolmentError(Exception):
    """Base of enrolment errors; the message says what was expected and what came."""


class EnrolmentDenied(EnrolmentError):
    pass


class UnknownDevice(EnrolmentError):
    pass


class EnrolmentInvalid(EnrolmentError):
    pass


def _aware(t: dt.datetime) -> dt.datetime:
    """SQLite gives datetimes back without a zone; they were stored as UTC."""
    return t if t.tzinfo is not None else t.replace(tzinfo=dt.timezone.utc)


ENROLMENT_TOKEN_PREFIX = "efe_"  # noqa: S105 - a prefix, not a secret


def token_digest(token: str) -> str:
    return hashlib.sha256(token.encode()).hexdigest()


def create_token(session: Session, device_id: str, ttl_s: int, *, now: dt.datetime | None = None) -> tuple[str, dt.datetime]:
    if session.get(Device, device_id) is None:
        raise UnknownDevice(f"device {device_id!r} is not registered; register it before creating an enrolment token")
    now = now or utcnow()
    token = ENROLMENT_TOKEN_PREFIX + secrets.token_urlsafe(32)  # never starts with "-": `--enrol TOKEN` parses
    expires = now + dt.timedelta(seconds=ttl_s)
    session.add(EnrolmentToken(token_sha256=token_digest(token), device_id=device_id, expires_at=expires, created_at=now))
    session.commit()
    return token, expires


def _record(session: Session, ca: DeviceCA, device_id: str, csr_pem: bytes, validity: dt.timedelta) -> DeviceCertificate:
    try:
        issued = ca.issue_device(device_id, csr_pem, validity=validity)
    except PkiError as exc:
        raise EnrolmentInvalid(str(exc)) from None
    row = DeviceCertificate(
        serial=format(issued.serial, "x"),
        device_id=device_id,
        not_before=issued.not_before,
        not_after=issued.not_after,
        pem=issued.pem.decode(),
    )
    session.add(row)
    session.commit()
    session.refresh(row)
    return row


def enrol(session: Session, ca: DeviceCA, token: str, csr_pem: bytes, validity: dt.timedelta) -> DeviceCertificate:
    """Spend ``token`` and sign the CSR for the token's device."""
    now = utcnow()
    row = session.get(EnrolmentToken, token_digest(token))
    if row is None:
        raise EnrolmentDenied("unknown enrolment token")
    if row.used_at is not None:
        raise EnrolmentDenied("enrolment token already used; ask the operator for a new one")
    if _aware(row.expires_at) <= now:
        raise EnrolmentDenied(f"enrolment token expired at {_aware(row.expires_at).isoformat()}")
    if session.get(Device, row.device_id) is None:
        raise UnknownDevice(f"device {row.device_id!r} is no longer registered")
    try:
        check_device_csr(row.device_id, csr_pem)  # validate before spending the token
    except PkiError as exc:
        raise EnrolmentInvalid(str(exc)) from None
    spent = session.execute(
        update(EnrolmentToken)
        .where(col(EnrolmentToken.token_sha256) == row.token_sha256, col(EnrolmentToken.used_at).is_(None))
        .values(used_at=now)
    )
    session.commit()
    if spent.rowcount != 1:  # type: ignore[attr-defined]
        raise EnrolmentDenied("enrolment token already used; ask the operator for a new one")
    return _record(session, ca, row.device_id, csr_pem, validity)


def renew(session: Session, ca: DeviceCA, cert_pem: bytes, csr_pem: bytes, validity: dt.timedelta) -> DeviceCertificate:
    """A new certificate for the same key, given a current valid certificate."""
    try:
        cert = x509.load_pem_x509_certificate(cert_pem)
    except ValueError as exc:
        raise EnrolmentInvalid(f"expected a PEM certificate: {exc}") from None
    try:
        cert.verify_directly_issued_by(ca.cert)
    except (ValueError, TypeError, InvalidSignature):
        raise EnrolmentDenied("certificate was not issued by this controller's device CA") from None
    row = session.get(DeviceCertificate, format(cert.serial_number, "x"))
    if row is None:
        raise EnrolmentDenied("certificate is not on record")
    if row.revoked_at is not None:
        raise EnrolmentDenied(f"certificate was revoked at {_aware(row.revoked_at).isoformat()}; the device must be re-enrolled")
    if cert.not_valid_after_utc <= utcnow():
        raise EnrolmentDenied(f"certificate expired at {cert.not_valid_after_utc.isoformat()}; the device must be re-enrolled")
    try:
        csr = load_csr(csr_pem)
        device_id = common_name(cert)
    except PkiError as exc:
        raise EnrolmentInvalid(str(exc)) from None
    spki = serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    if csr.public_key().public_bytes(*spki) != cert.public_key().public_bytes(*spki):
        raise EnrolmentDenied("renewal CSR must carry the same public key as the current certificate")
    return _record(session, ca, device_id, csr_pem, validity)


def revoke(session: Session, device_id: str) -> list[str]:
    """Revoke every certificate of the device and spend its open tokens; return the serials revoked now."""
    if session.get(Device, device_id) is None:
        raise UnknownDevice(f"device {device_id!r} is not registered")
    now = utcnow()
    certs = session.exec(
        select(DeviceCertificate).where(DeviceCertificate.device_id == device_id, col(DeviceCertificate.revoked_at).is_(None))
    ).all()
    for c in certs:
        c.revoked_at = now
        session.add(c)
    for t in session.exec(
        select(EnrolmentToken).where(EnrolmentToken.device_id == device_id, col(EnrolmentToken.used_at).is_(None))
    ).all():
        t.used_at = now
        session.add(t)
    session.commit()
    return [c.serial for c in certs]


def mark_offline(session: Session, device_id: str) -> None:
    device = session.get(Device, device_id)
    if device is not None and device.online:
        device.online = False
        session.add(device)
        session.commit()


def current_crl(session: Session, ca: DeviceCA) -> bytes:
    """The CRL over every revoked certificate that has not expired yet."""
    now = utcnow()
    rows = session.exec(select(DeviceCertificate).where(col(DeviceCertificate.revoked_at).is_not(None))).all()
    revoked = [(int(r.serial, 16), _aware(r.revoked_at)) for r in rows if r.revoked_at and _aware(r.not_after) > now]
    return ca.crl(revoked)


def enrolled_devices(session: Session, now: dt.datetime | None = None) -> list[str]:
    """Devices holding at least one unrevoked, unexpired certificate, sorted."""
    t = now or dt.datetime.now(dt.timezone.utc)
    dc = DeviceCertificate
    rows = session.exec(select(dc.device_id, dc.not_after).where(col(dc.revoked_at).is_(None))).all()
    return sorted({d for d, not_after in rows if _aware(not_after) > t})

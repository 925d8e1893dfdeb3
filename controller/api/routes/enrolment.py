"""Device identity: enrolment tokens, enrolment, renewal, revocation, CA and CRL.

``/v1/identity/enrol`` and ``/v1/identity/renew`` are called by devices (the
token or the current certificate is the credential); the rest needs the
operator's token.
"""

from __future__ import annotations

import datetime as dt
import logging
from typing import Annotated

from fastapi import APIRouter, Depends, HTTPException, Request, status
from fastapi.responses import PlainTextResponse

from controller.api.deps import MqttDep, SessionDep, SettingsDep, needs
from controller.api.schemas import (
    CertificatePublic,
    EnrolmentTokenCreate,
    EnrolmentTokenPublic,
    EnrolRequest,
    RenewRequest,
    RevocationPublic,
)
from controller.core.roles import Role
from controller.core.tables import DeviceCertificate
from controller.identity import enrolment
from controller.identity.broker_auth import BrokerControl
from controller.identity.pki import DeviceCA

log = logging.getLogger(__name__)
router = APIRouter(prefix="/v1/identity", tags=["identity"])
PEM = "application/x-pem-file"


def get_ca(request: Request) -> DeviceCA:
    return request.app.state.ca  # type: ignore[no-any-return]


def get_broker_control(request: Request) -> BrokerControl:
    return request.app.state.broker_control  # type: ignore[no-any-return]


CADep = Annotated[DeviceCA, Depends(get_ca)]
BrokerControlDep = Annotated[BrokerControl, Depends(get_broker_control)]

_STATUS = {
    enrolment.EnrolmentDenied: status.HTTP_403_FORBIDDEN,
    enrolment.UnknownDevice: status.HTTP_404_NOT_FOUND,
    enrolment.EnrolmentInvalid: status.HTTP_422_UNPROCESSABLE_CONTENT,
}


def _http(exc: enrolment.EnrolmentError) -> HTTPException:
    return HTTPException(_STATUS.get(type(exc), status.HTTP_400_BAD_REQUEST), str(exc))


def _public(row: DeviceCertificate, ca: DeviceCA) -> CertificatePublic:
    return CertificatePublic(
        device_id=row.device_id,
        serial=row.serial,
        not_before=row.not_before,
        not_after=row.not_after,
        certificate=row.pem,
        ca_certificate=ca.cert_pem.decode(),
    )


@router.post(
    "/tokens", status_code=status.HTTP_201_CREATED, response_model=EnrolmentTokenPublic, dependencies=[needs(Role.OPERATOR)]
)
def create_token(body: EnrolmentTokenCreate, session: SessionDep) -> EnrolmentTokenPublic:
    """A one-time token for a registered device; shown once, stored only as a hash."""
    try:
        token, expires = enrolment.create_token(session, body.device_id, body.ttl_s)
    except enrolment.EnrolmentError as exc:
        raise _http(exc) from None
    return EnrolmentTokenPublic(device_id=body.device_id, token=token, expires_at=expires)


@router.post("/enrol", status_code=status.HTTP_201_CREATED, response_model=CertificatePublic)
def enrol(body: EnrolRequest, session: SessionDep, ca: CADep, settings: SettingsDep, mqtt: MqttDep) -> CertificatePublic:
    try:
        row = enrolment.enrol(session, ca, body.token, body.csr.encode(), dt.timedelta(days=settings.device_cert_days))
    except enrolment.EnrolmentError as exc:
        log.warning("enrolment refused: %s", exc)  # the token itself is never logged
        raise _http(exc) from None
    log.info("device %s enrolled, certificate %s until %s", row.device_id, row.serial, row.not_after)
    # Before the device holds its certificate: its role refuses $share/... subscriptions (broker_auth).
    if settings.broker_tls and mqtt is not None and not mqtt.register_devices([row.device_id]):
        log.warning("device %s not yet registered with the broker's dynamic security; the leader retries", row.device_id)
    return _public(row, ca)


@router.post("/renew", status_code=status.HTTP_201_CREATED, response_model=CertificatePublic)
def renew(body: RenewRequest, session: SessionDep, ca: CADep, settings: SettingsDep) -> CertificatePublic:
    try:
        row = enrolment.renew(
            session, ca, body.certificate.encode(), body.csr.encode(), dt.timedelta(days=settings.device_cert_days)
        )
    except enrolment.EnrolmentError as exc:
        log.warning("renewal refused: %s", exc)
        raise _http(exc) from None
    return _public(row, ca)


@router.post("/devices/{device_id}/revoke", response_model=RevocationPublic, dependencies=[needs(Role.ADMIN)])
def revoke(device_id: str, session: SessionDep, ca: CADep, control: BrokerControlDep, mqtt: MqttDep) -> RevocationPublic:
    """Revoke the device's certificates: new CRL to the broker (no reconnect), then drop its live session."""
    try:
        serials = enrolment.revoke(session, device_id)
    except enrolment.EnrolmentError as exc:
        raise _http(exc) from None
    reloaded = control.install_crl(enrolment.current_crl(session, ca))
    enrolment.mark_offline(session, device_id)  # a kicked client's Last Will is not sent
    kicked = mqtt.kick(device_id) if mqtt is not None else False
    log.warning("device %s revoked (%d certificates); broker reloaded=%s kicked=%s", device_id, len(serials), reloaded, kicked)
    return RevocationPublic(device_id=device_id, revoked_serials=serials, broker_reloaded=reloaded, kicked=kicked)


@router.get("/ca", response_class=PlainTextResponse)
def ca_certificate(ca: CADep) -> PlainTextResponse:
    return PlainTextResponse(ca.cert_pem.decode(), media_type=PEM)


@router.get("/crl", response_class=PlainTextResponse)
def crl(session: SessionDep, ca: CADep) -> PlainTextResponse:
    """The current CRL, for brokers that do not share a file system with the controller."""
    return PlainTextResponse(enrolment.current_crl(session, ca).decode(), media_type=PEM)

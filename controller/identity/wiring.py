"""Wires device identity into the app: the device CA, the broker's CRL, mTLS for MQTT.

Kept apart from ``app.py`` so the app factory stays a list of parts.
"""

from __future__ import annotations

import logging
import ssl

from fastapi import FastAPI
from sqlalchemy import Engine
from sqlmodel import Session

from controller.core.config import Settings
from controller.identity.broker_auth import BrokerControl
from controller.identity.enrolment import current_crl
from controller.identity.pki import DeviceCA

log = logging.getLogger(__name__)


def mqtt_tls_context(settings: Settings) -> ssl.SSLContext | None:
    """The controller's MQTT mTLS context, or None for a plain (development) broker."""
    if not settings.broker_tls:
        return None
    if settings.broker_cert_file is None or settings.broker_key_file is None:
        raise ValueError("EDGEFLEET_BROKER_TLS=true needs EDGEFLEET_BROKER_CERT_FILE and EDGEFLEET_BROKER_KEY_FILE")
    ctx = ssl.create_default_context(cafile=str(settings.broker_ca_file or settings.ca_dir / "ca.pem"))
    ctx.load_cert_chain(str(settings.broker_cert_file), str(settings.broker_key_file))
    return ctx


def install(app: FastAPI, settings: Settings, engine: Engine) -> None:
    """Open (or in development create) the device CA and publish a fresh CRL to the broker."""
    if settings.development and not (settings.ca_dir / "ca.key").exists():
        log.warning(
            "development: creating the device CA at %s (outside development, `edgefleet-controller init` does)", settings.ca_dir
        )
    ca = DeviceCA.open(settings.ca_dir, create=settings.development)
    control = BrokerControl(settings.broker_crl_file, settings.broker_pid_file)
    app.state.ca = ca
    app.state.broker_control = control
    if settings.broker_crl_file is not None:
        with Session(engine) as session:
            control.install_crl(current_crl(session, ca))  # re-signed on every start: CRLs expire

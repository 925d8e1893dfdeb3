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
from controller.identity.broker_devices import CHECK_INTERVAL_S, DeviceSync
from controller.identity.enrolment import current_crl
from controller.identity.pki import DeviceCA
from shared.fsutil import atomic_write_bytes

log = logging.getLogger(__name__)


def mqtt_tls_context(settings: Settings) -> ssl.SSLContext | None:
    """The controller's MQTT mTLS context, or None for a plain (development) broker.

    The client key comes from ``EDGEFLEET_BROKER_KEY_FILE`` or, as PEM, from ``EDGEFLEET_BROKER_KEY``
    (Kubernetes: a secret in the environment); the latter is written once to a 0600 file in the data
    directory, because the TLS library reads keys from files."""
    if not settings.broker_tls:
        return None
    key_file = settings.broker_key_file
    if settings.broker_key:
        key_file = settings.data_dir / "identity" / "mqtt-client.key"
        atomic_write_bytes(key_file, settings.broker_key.encode(), mode=0o600)
    if settings.broker_cert_file is None or key_file is None:
        raise ValueError(
            "EDGEFLEET_BROKER_TLS=true needs EDGEFLEET_BROKER_CERT_FILE and EDGEFLEET_BROKER_KEY_FILE (or EDGEFLEET_BROKER_KEY)"
        )
    ctx = ssl.create_default_context(cafile=str(settings.broker_ca_file or settings.ca_dir / "ca.pem"))
    ctx.load_cert_chain(str(settings.broker_cert_file), str(key_file))
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
    mqtt = app.state.mqtt
    if settings.broker_tls and mqtt is not None:  # the secure broker: enrolled devices are dynsec clients
        sync = DeviceSync(engine, mqtt.register_devices, lambda: mqtt.connects if mqtt.connected.is_set() else 0)
        app.state.leader.add_job("broker.devices", CHECK_INTERVAL_S, sync)

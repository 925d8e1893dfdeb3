"""A local edgefleet stack for simulations, tests and the demo: a private Mosquitto and the real controller.

``secure=True`` runs the broker with the generated mTLS configuration (the
controller's device CA, ACL, CRL) and the controller with its own client
certificate, as in a deployment; devices then enrol with one-time tokens.
"""

from __future__ import annotations

import getpass
from dataclasses import dataclass
from pathlib import Path

from controller.identity import pki
from controller.identity.broker_auth import provision, write_identity
from controller.identity.broker_config import BrokerSecurity, MosquittoConfig
from firmware_sim.mosquitto import MosquittoProcess, free_port
from firmware_sim.procs import ControllerProc, start_controller

__all__ = ["Stack", "secure_broker", "start_stack"]


@dataclass
class Stack:
    workdir: Path
    broker: MosquittoProcess
    controller: ControllerProc
    security: BrokerSecurity | None = None

    @property
    def secure(self) -> bool:
        return self.security is not None

    def director_key(self) -> str:
        with self.controller.client() as api:
            return str(api.get("/v1/trust").json()["director_public_key"])

    def identity_extra(self, device_dir: Path) -> str:
        """The agent config table that makes a device enrol and connect with mTLS ("" on a plain stack)."""
        if not self.secure:
            return ""
        return f'[identity]\ndirectory = "{device_dir / "identity"}"\ncontroller_url = "{self.controller.url}"\n'

    def stop(self) -> None:
        self.controller.stop()
        self.broker.stop()


def secure_broker(workdir: Path, broker_port: int | None = None) -> tuple[MosquittoConfig, dict[str, str], BrokerSecurity]:
    """The mTLS broker of a deployment, for a controller whose data directory is ``workdir/controller``:
    its device CA (made now, the controller opens the same one), the broker's files (ACL, CRL, dynamic
    security) and the controller's client certificate. Returns the broker's config and the controller's
    ``EDGEFLEET_BROKER_*`` settings."""
    ca = pki.DeviceCA.open(workdir / "controller" / "ca", create=True)  # the controller's own CA
    sec = provision(ca, workdir / "broker-files")
    ident = write_identity(ca, pki.CONTROLLER_IDENTITY, workdir / "controller-identity")
    pid = workdir / "broker" / "mosquitto.pid"
    config = MosquittoConfig(port=broker_port or free_port(), security=sec, pid_file=pid, run_as=getpass.getuser())
    env = {
        "EDGEFLEET_BROKER_TLS": "true",
        "EDGEFLEET_BROKER_CA_FILE": str(sec.cafile),
        "EDGEFLEET_BROKER_CERT_FILE": str(ident.cert),
        "EDGEFLEET_BROKER_KEY_FILE": str(ident.key),
        "EDGEFLEET_BROKER_CRL_FILE": str(sec.crlfile),
        "EDGEFLEET_BROKER_PID_FILE": str(pid),
    }
    return config, env, sec


def start_stack(
    workdir: Path,
    *,
    secure: bool = False,
    database_url: str | None = None,
    controller_env: dict[str, str] | None = None,
    broker_port: int | None = None,
) -> Stack:
    workdir.mkdir(parents=True, exist_ok=True)
    env = dict(controller_env or {})
    sec: BrokerSecurity | None = None
    if secure:
        config, tls_env, sec = secure_broker(workdir, broker_port)
        env |= tls_env
    else:
        config = MosquittoConfig(port=broker_port or free_port())
    broker = MosquittoProcess(workdir / "broker", config)
    broker.start()
    try:
        controller = start_controller(
            workdir, broker_host=broker.host, broker_port=broker.port, database_url=database_url, env=env
        )
    except Exception:
        broker.stop()
        raise
    return Stack(workdir, broker, controller, sec)

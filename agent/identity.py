"""The device's identity: its private key (made here, mode 0600, never sent), its certificate.

Enrolment: make a key and a CSR on the device, send the CSR with a one-time
token to the controller, store the certificate it returns. Renewal: before the
certificate expires, send the current certificate and a CSR for the same key.
HTTP goes through the agent's one client (agent/http.py), which trusts only
``[identity] controller_ca_file`` when it is set.

Files under the identity directory::

    device.key   EC P-256 private key, mode 0600, created once with O_EXCL
    device.pem   the current client certificate (replaced atomically)
    ca.pem       the device CA: the broker's certificate must chain to it
"""

from __future__ import annotations

import datetime as dt
import json
import logging
import os
import ssl
import stat
import threading
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from cryptography.hazmat.primitives.asymmetric import ec

# cryptography.x509 and urllib.request (~4 MB resident together) are imported where a
# certificate or the controller is used: an agent without an [identity] table never loads them.

from agent.config import AgentConfig, BrokerConfig
from shared.csr import make_csr
from shared.fsutil import atomic_write_bytes as atomic_write

log = logging.getLogger(__name__)


class IdentityError(Exception):
    """Enrolment or renewal failed; the message says why and what to do."""


@dataclass(frozen=True)
class IdentityPaths:
    directory: Path

    @property
    def key(self) -> Path:
        return self.directory / "device.key"

    @property
    def cert(self) -> Path:
        return self.directory / "device.pem"

    @property
    def ca(self) -> Path:
        return self.directory / "ca.pem"


def ensure_key(path: Path) -> ec.EllipticCurvePrivateKey:
    """Load the device key, or create it (mode 0600, never overwritten). Refuse a key others can read."""
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric import ec

    if path.exists():
        check_key_mode(path)
        key = serialization.load_pem_private_key(path.read_bytes(), password=None)
        if not isinstance(key, ec.EllipticCurvePrivateKey):
            raise IdentityError(f"{path}: expected an EC private key, got {type(key).__name__}")
        return key
    path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
    key = ec.generate_private_key(ec.SECP256R1())
    pem = key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption())
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "wb") as f:
        f.write(pem)
        f.flush()
        os.fsync(f.fileno())
    return key


def not_after(cert_path: Path) -> dt.datetime:
    from cryptography import x509

    return x509.load_pem_x509_certificate(cert_path.read_bytes()).not_valid_after_utc


def renewal_due(cert_path: Path, before: dt.timedelta, now: dt.datetime | None = None) -> bool:
    now = now or dt.datetime.now(dt.timezone.utc)
    return not_after(cert_path) - before <= now


def _post(url: str, body: dict[str, Any], *, cafile: Path | None, timeout: float) -> dict[str, Any]:
    if not url.startswith(("https://", "http://")):
        raise IdentityError(f"controller URL must be http(s)://, got {url!r}")
    import urllib.error

    from agent.http import ControllerHttp

    data = json.dumps(body).encode()
    client = ControllerHttp(cafile=cafile, timeout=timeout)
    try:
        with client.open(url, data=data, headers={"Content-Type": "application/json"}, method="POST") as resp:
            result: dict[str, Any] = json.loads(resp.read(1_000_000))
            return result
    except urllib.error.HTTPError as exc:
        try:
            detail = json.loads(exc.read(10_000)).get("detail", "")
        except ValueError:
            detail = ""
        raise IdentityError(f"controller refused ({exc.code}): {detail or exc.reason}") from None
    except (urllib.error.URLError, OSError, ValueError) as exc:
        raise IdentityError(f"cannot reach the controller at {url}: {exc}") from None


def _store(paths: IdentityPaths, result: dict[str, Any], device_id: str) -> dt.datetime:
    from cryptography import x509
    from cryptography.x509.oid import NameOID

    try:
        cert = x509.load_pem_x509_certificate(result["certificate"].encode())
        x509.load_pem_x509_certificate(result["ca_certificate"].encode())
    except (KeyError, AttributeError, ValueError) as exc:
        raise IdentityError(f"controller sent no valid certificate: {exc}") from None
    cn = cert.subject.get_attributes_for_oid(NameOID.COMMON_NAME)
    if [a.value for a in cn] != [device_id]:
        raise IdentityError(f"certificate names {[a.value for a in cn]}, expected [{device_id!r}]")
    atomic_write(paths.ca, result["ca_certificate"].encode())
    atomic_write(paths.cert, result["certificate"].encode())
    return cert.not_valid_after_utc


def enrol(
    controller_url: str, token: str, device_id: str, paths: IdentityPaths, *, cafile: Path | None = None, timeout: float = 30.0
) -> dt.datetime:
    """Enrol this device; return the certificate's expiry."""
    key = ensure_key(paths.key)
    body = {"token": token, "csr": make_csr(key, device_id).decode()}
    result = _post(f"{controller_url.rstrip('/')}/v1/identity/enrol", body, cafile=cafile, timeout=timeout)
    return _store(paths, result, device_id)


def renew(
    controller_url: str, device_id: str, paths: IdentityPaths, *, cafile: Path | None = None, timeout: float = 30.0
) -> dt.datetime:
    """Renew the certificate for the same key; return the new expiry."""
    key = ensure_key(paths.key)
    body = {"certificate": paths.cert.read_text(), "csr": make_csr(key, device_id).decode()}
    result = _post(f"{controller_url.rstrip('/')}/v1/identity/renew", body, cafile=cafile, timeout=timeout)
    return _store(paths, result, device_id)


def check_key_mode(path: Path) -> None:
    mode = stat.S_IMODE(path.stat().st_mode)
    if mode & 0o077:
        raise IdentityError(f"{path} is readable by group or others (mode {mode:o}); expected 600: chmod 600 {path}")


def broker_tls_context(broker: BrokerConfig) -> ssl.SSLContext | None:
    """The MQTT client context, or None when the [broker] table has no certificate."""
    if broker.cert_file is None or broker.key_file is None or broker.ca_file is None:
        return None
    return tls_context(broker.ca_file, broker.cert_file, broker.key_file)


def tls_context(ca: Path, cert: Path, key: Path) -> ssl.SSLContext:
    """Client context for the broker: trust only the device CA, present the device certificate."""
    for path in (ca, cert, key):
        if not path.exists():
            raise IdentityError(f"{path} does not exist: enrol the device first (edgefleet-agent enrol --token ...)")
    check_key_mode(key)
    ctx = ssl.create_default_context(cafile=str(ca))
    ctx.minimum_version = ssl.TLSVersion.TLSv1_2
    ctx.load_cert_chain(str(cert), str(key))
    return ctx


class Renewer:
    """Checks the certificate now and then and renews it ``before`` its expiry."""

    def __init__(
        self,
        controller_url: str,
        device_id: str,
        paths: IdentityPaths,
        *,
        before: dt.timedelta,
        on_renewed: Callable[[], None],
        cafile: Path | None = None,
        interval: float = 3600.0,  # seconds between checks
    ) -> None:
        self.controller_url, self.device_id, self.paths = controller_url, device_id, paths
        self.before, self.on_renewed, self.cafile, self.interval = before, on_renewed, cafile, interval
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="identity-renewer", daemon=True)

    def check(self) -> bool:
        """Renew if due; return whether a new certificate was installed."""
        if not renewal_due(self.paths.cert, self.before):
            return False
        expiry = renew(self.controller_url, self.device_id, self.paths, cafile=self.cafile)
        log.info("certificate renewed; valid until %s", expiry.isoformat())
        self.on_renewed()
        return True

    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                self.check()
            except (IdentityError, OSError, ValueError) as exc:
                log.warning("certificate renewal failed (will retry): %s", exc)
            self._stop.wait(self.interval)

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()


def make_renewer(cfg: AgentConfig, on_renewed: Callable[[], None]) -> Renewer | None:
    """A renewer when the config has an [identity] table with a controller URL."""
    ident = cfg.identity
    if ident is None or not ident.controller_url:
        return None
    return Renewer(
        ident.controller_url,
        cfg.device_id,
        IdentityPaths(ident.directory),
        before=dt.timedelta(days=ident.renew_before_days),
        on_renewed=on_renewed,
        cafile=ident.controller_ca_file,
    )


class DeviceCredential:
    """Signs the agent's requests to the controller with the device key (``shared.device_auth``).

    The certificate's serial is read again whenever the file changes (renewal).
    Without a certificate yet (not enrolled), requests go out unsigned.
    """

    def __init__(self, paths: IdentityPaths) -> None:
        self.paths = paths
        self._cached: tuple[float, str, ec.EllipticCurvePrivateKey] | None = None
        self._lock = threading.Lock()

    def authorization(self, method: str, path: str, body: bytes) -> str | None:
        from shared.device_auth import sign

        try:
            mtime = self.paths.cert.stat().st_mtime
        except OSError:
            return None
        with self._lock:
            if self._cached is None or self._cached[0] != mtime:
                from cryptography import x509
                from cryptography.hazmat.primitives import serialization
                from cryptography.hazmat.primitives.asymmetric import ec as ec_

                serial = format(x509.load_pem_x509_certificate(self.paths.cert.read_bytes()).serial_number, "x")
                key = serialization.load_pem_private_key(self.paths.key.read_bytes(), password=None)
                if not isinstance(key, ec_.EllipticCurvePrivateKey):
                    raise IdentityError(f"{self.paths.key}: expected an EC private key")
                self._cached = (mtime, serial, key)
            _, serial, key = self._cached
        return sign(key, serial, method, path, body)

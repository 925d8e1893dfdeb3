"""The device CA: issues client certificates that name a device, and the CRL.

Pure certificate logic on top of ``cryptography``; the only I/O is
``DeviceCA.open`` (load or create the CA key and certificate, key mode 0600).

A device certificate's subject CN *is* the device's MQTT identity: the broker
takes it as the username (``use_identity_as_username``) and its ACL patterns
substitute it for ``%u``. So the CA writes the CN itself, from the enrolment
token's device_id, never from what the CSR asks for. The CSR only proves the
device holds the private key (its signature is checked); a CSR that names a
different device is refused.

Service identities (the controller's MQTT client, the broker's TLS server)
use names that are *not* valid device ids (they start with ``_``), so no
enrolment can ever produce them.
"""

from __future__ import annotations

import datetime as dt
import ipaddress
from dataclasses import dataclass
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from shared.errors import TopicError
from shared.fsutil import atomic_write_bytes
from shared.topics import validate_device_id

CONTROLLER_IDENTITY = "_controller"  # the controller's MQTT username (certificate CN)
BROKER_IDENTITY = "_broker"  # CN of the broker's server certificate
DEFAULT_DEVICE_VALIDITY = dt.timedelta(days=30)
DEFAULT_CA_VALIDITY = dt.timedelta(days=3650)
CRL_VALIDITY = dt.timedelta(days=365)  # re-signed on every revocation and start; Mosquitto refuses all when expired


class PkiError(Exception):
    """A CSR or certificate is not acceptable; the message says why."""


def utcnow() -> dt.datetime:
    return dt.datetime.now(dt.timezone.utc)


def new_key() -> ec.EllipticCurvePrivateKey:
    return ec.generate_private_key(ec.SECP256R1())


def key_pem(key: ec.EllipticCurvePrivateKey) -> bytes:
    return key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption())


def cert_pem(cert: x509.Certificate) -> bytes:
    return cert.public_bytes(serialization.Encoding.PEM)


def common_name(cert: x509.Certificate | x509.CertificateSigningRequest) -> str:
    attrs = cert.subject.get_attributes_for_oid(NameOID.COMMON_NAME)
    if len(attrs) != 1:
        raise PkiError(f"expected exactly one subject CN, got {len(attrs)}")
    value = attrs[0].value
    return value if isinstance(value, str) else value.decode()


@dataclass(frozen=True)
class Issued:
    device_id: str
    serial: int
    not_before: dt.datetime
    not_after: dt.datetime
    pem: bytes


class DeviceCA:
    """Signs device, controller and broker certificates and the CRL."""

    def __init__(self, key: ec.EllipticCurvePrivateKey, cert: x509.Certificate) -> None:
        self._key = key
        self.cert = cert

    # -- creation / loading ------------------------------------------------------
    @classmethod
    def generate(cls, name: str = "edgefleet device CA", validity: dt.timedelta = DEFAULT_CA_VALIDITY) -> DeviceCA:
        key = new_key()
        subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name)])
        now = utcnow()
        ski = x509.SubjectKeyIdentifier.from_public_key(key.public_key())
        cert = (
            x509.CertificateBuilder()
            .subject_name(subject)
            .issuer_name(subject)
            .public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - dt.timedelta(minutes=5))
            .not_valid_after(now + validity)
            .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
            .add_extension(
                x509.KeyUsage(
                    digital_signature=False,
                    content_commitment=False,
                    key_encipherment=False,
                    data_encipherment=False,
                    key_agreement=False,
                    key_cert_sign=True,
                    crl_sign=True,
                    encipher_only=False,
                    decipher_only=False,
                ),
                critical=True,
            )
            .add_extension(ski, critical=False)
            .sign(key, hashes.SHA256())
        )
        return cls(key, cert)

    @classmethod
    def open(cls, directory: Path, *, create: bool) -> DeviceCA:
        """Load ``ca.key``/``ca.pem`` from ``directory``; create them (key mode 0600) when allowed."""
        key_path, cert_path = directory / "ca.key", directory / "ca.pem"
        if not key_path.exists():
            if not create:
                raise PkiError(
                    f"no device CA at {directory}: expected ca.key and ca.pem"
                    " (python -m controller.identity.broker_setup creates one)"
                )
            ca = cls.generate()
            atomic_write_bytes(key_path, key_pem(ca._key), mode=0o600)
            atomic_write_bytes(cert_path, cert_pem(ca.cert))
            return ca
        key = serialization.load_pem_private_key(key_path.read_bytes(), password=None)
        if not isinstance(key, ec.EllipticCurvePrivateKey):
            raise PkiError(f"{key_path}: expected an EC private key, got {type(key).__name__}")
        return cls(key, x509.load_pem_x509_certificate(cert_path.read_bytes()))

    @property
    def cert_pem(self) -> bytes:
        return cert_pem(self.cert)

    # -- issuing -------------------------------------------------------------------
    def _sign(
        self,
        cn: str,
        public_key: ec.EllipticCurvePublicKey,
        usage: x509.ObjectIdentifier,
        validity: dt.timedelta,
        now: dt.datetime | None,
        sans: list[x509.GeneralName] | None = None,
    ) -> Issued:
        now = now or utcnow()
        not_before, not_after = now - dt.timedelta(minutes=5), now + validity
        builder = (
            x509.CertificateBuilder()
            .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, cn)]))
            .issuer_name(self.cert.subject)
            .public_key(public_key)
            .serial_number(x509.random_serial_number())
            .not_valid_before(not_before)
            .not_valid_after(not_after)
            .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
            .add_extension(x509.ExtendedKeyUsage([usage]), critical=False)
            .add_extension(x509.SubjectKeyIdentifier.from_public_key(public_key), critical=False)
            .add_extension(x509.AuthorityKeyIdentifier.from_issuer_public_key(self._key.public_key()), critical=False)
        )
        if sans:
            builder = builder.add_extension(x509.SubjectAlternativeName(sans), critical=False)
        cert = builder.sign(self._key, hashes.SHA256())
        return Issued(cn, cert.serial_number, not_before, not_after, cert_pem(cert))

    def issue_device(
        self, device_id: str, csr_pem: bytes, *, validity: dt.timedelta = DEFAULT_DEVICE_VALIDITY, now: dt.datetime | None = None
    ) -> Issued:
        """Sign a device's CSR; the CN is ``device_id``, whatever the CSR asked for beyond that."""
        public_key = check_device_csr(device_id, csr_pem)
        return self._sign(device_id, public_key, ExtendedKeyUsageOID.CLIENT_AUTH, validity, now)

    def issue_service(
        self,
        name: str,
        key: ec.EllipticCurvePrivateKey,
        *,
        server: bool = False,
        hosts: tuple[str, ...] = (),
        validity: dt.timedelta = dt.timedelta(days=365),
    ) -> Issued:
        """A certificate for the controller (client) or the broker (server, with ``hosts`` as SANs)."""
        if not name.startswith("_"):
            raise PkiError(f"service identities start with '_' so no device can hold them, got {name!r}")
        sans: list[x509.GeneralName] = []
        for h in hosts:
            try:
                sans.append(x509.IPAddress(ipaddress.ip_address(h)))
            except ValueError:
                sans.append(x509.DNSName(h))
        usage = ExtendedKeyUsageOID.SERVER_AUTH if server else ExtendedKeyUsageOID.CLIENT_AUTH
        return self._sign(name, key.public_key(), usage, validity, None, sans)

    def crl(self, revoked: list[tuple[int, dt.datetime]], *, now: dt.datetime | None = None) -> bytes:
        """A PEM CRL listing ``(serial, revoked_at)`` pairs, valid for CRL_VALIDITY."""
        now = now or utcnow()
        builder = (
            x509.CertificateRevocationListBuilder()
            .issuer_name(self.cert.subject)
            .last_update(now - dt.timedelta(minutes=5))
            .next_update(now + CRL_VALIDITY)
        )
        for serial, when in revoked:
            builder = builder.add_revoked_certificate(
                x509.RevokedCertificateBuilder().serial_number(serial).revocation_date(when).build()
            )
        return builder.sign(self._key, hashes.SHA256()).public_bytes(serialization.Encoding.PEM)


def load_csr(csr_pem: bytes) -> x509.CertificateSigningRequest:
    try:
        csr = x509.load_pem_x509_csr(csr_pem)
    except ValueError as exc:
        raise PkiError(f"expected a PEM certificate signing request: {exc}") from None
    if not csr.is_signature_valid:
        raise PkiError("CSR signature is invalid: it was not signed by the key it carries")
    return csr


def check_device_csr(device_id: str, csr_pem: bytes) -> ec.EllipticCurvePublicKey:
    """Validate a device's CSR for ``device_id``; return its public key or raise PkiError."""
    try:
        validate_device_id(device_id)
    except TopicError as exc:
        raise PkiError(str(exc)) from None
    csr = load_csr(csr_pem)
    asked = common_name(csr)
    if asked != device_id:
        raise PkiError(f"CSR names {asked!r} but the enrolment is for device {device_id!r}")
    public_key = csr.public_key()
    if not isinstance(public_key, ec.EllipticCurvePublicKey) or public_key.curve.key_size < 256:
        raise PkiError(f"expected an EC P-256 (or stronger) key in the CSR, got {type(public_key).__name__}")
    return public_key

"""Device-signed HTTP requests: the device proves who it is with the key of its certificate.

A device adds ``Authorization: EdgefleetDevice serial=<hex>, ts=<unix s>, sig=<base64url>``
where ``serial`` names the certificate the controller issued it and ``sig`` is
the ECDSA-SHA256 signature, with that certificate's key, over
:func:`signing_input` (method, path, timestamp, sha256 of the body). The
controller looks the certificate up by serial in its own records, so it parses
no certificate a client sends; the credential works through TLS-terminating
proxies, unlike mTLS at the API. ``sign`` is what the agent calls; the
controller verifies in ``controller/identity/device_auth.py``.
"""

from __future__ import annotations

import base64
import hashlib
import re
import time
from typing import TYPE_CHECKING

if TYPE_CHECKING:  # cryptography loads with the first signature (the agent stays small without an identity)
    from cryptography.hazmat.primitives.asymmetric import ec

from shared.errors import ProtocolError

SCHEME = "EdgefleetDevice"
MAX_SKEW_S = 300  # a signed request is accepted this long before and after its timestamp
_HEADER = re.compile(rf"^{SCHEME} serial=([0-9a-f]{{1,40}}), ts=([0-9]{{1,12}}), sig=([A-Za-z0-9_-]{{1,200}}={{0,2}})$")


class DeviceAuthError(ProtocolError):
    """A device credential is missing, malformed, stale or does not verify."""


def signing_input(method: str, path: str, ts: int, body: bytes) -> bytes:
    return f"{SCHEME}\n{method.upper()}\n{path}\n{ts}\n{hashlib.sha256(body).hexdigest()}".encode()


def header(serial: str, ts: int, signature: bytes) -> str:
    return f"{SCHEME} serial={serial}, ts={ts}, sig={base64.urlsafe_b64encode(signature).decode()}"


def parse_header(value: str | None) -> tuple[str, int, bytes]:
    """``(serial, ts, signature)`` or DeviceAuthError."""
    if not value:
        raise DeviceAuthError(f"missing device credential (Authorization: {SCHEME} ...)")
    m = _HEADER.match(value.strip())
    if m is None:
        raise DeviceAuthError(f"malformed device credential: expected '{SCHEME} serial=<hex>, ts=<int>, sig=<base64url>'")
    try:
        sig = base64.urlsafe_b64decode(m.group(3))
    except ValueError:
        raise DeviceAuthError("malformed device credential: signature is not base64url") from None
    return m.group(1), int(m.group(2)), sig


def sign(key: ec.EllipticCurvePrivateKey, serial: str, method: str, path: str, body: bytes, ts: int | None = None) -> str:
    """The ``Authorization`` header value for one request, signed with the device key."""
    from cryptography.hazmat.primitives import hashes
    from cryptography.hazmat.primitives.asymmetric import ec

    ts = int(time.time()) if ts is None else ts
    return header(serial, ts, key.sign(signing_input(method, path, ts, body), ec.ECDSA(hashes.SHA256())))

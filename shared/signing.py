"""Ed25519 signing of JSON documents in a TUF-like envelope.

A signed document is ``{"signed": {...}, "signatures": [{"keyid": ..., "sig": ...}]}``
where ``sig`` is the hex Ed25519 signature over ``canonical_json(signed)`` and
``keyid`` is the sha256 of the raw public key (hex). This is the format of the
director's per-device assignments; the image repository uses python-tuf.
"""

from __future__ import annotations

import hashlib
import os
from pathlib import Path
from typing import Any

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import (
    Ed25519PrivateKey,
    Ed25519PublicKey,
)

from shared.canonical import canonical_json
from shared.errors import SignatureError

_RAW = serialization.Encoding.Raw
_RAW_PUB = serialization.PublicFormat.Raw


def public_key_hex(key: Ed25519PublicKey) -> str:
    return key.public_bytes(_RAW, _RAW_PUB).hex()


def key_id(key: Ed25519PublicKey) -> str:
    return hashlib.sha256(key.public_bytes(_RAW, _RAW_PUB)).hexdigest()


def load_public_key(hex_key: str) -> Ed25519PublicKey:
    try:
        return Ed25519PublicKey.from_public_bytes(bytes.fromhex(hex_key.strip()))
    except ValueError as exc:
        raise SignatureError(f"Invalid Ed25519 public key: expected 64 hex characters ({exc})") from exc


def generate_private_key_file(path: Path) -> Ed25519PrivateKey:  # pragma: no mutate block
    """Create a new private key at ``path`` (PEM, mode 0600) and return it."""
    key = Ed25519PrivateKey.generate()
    pem = key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption())
    path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "wb") as f:
        f.write(pem)
    return key


def load_private_key_file(path: Path) -> Ed25519PrivateKey:  # pragma: no mutate block
    key = serialization.load_pem_private_key(path.read_bytes(), password=None)
    if not isinstance(key, Ed25519PrivateKey):
        raise SignatureError(f"{path}: expected an Ed25519 private key, got {type(key).__name__}")
    return key


def sign_document(signed: dict[str, Any], key: Ed25519PrivateKey) -> dict[str, Any]:
    sig = key.sign(canonical_json(signed)).hex()
    return {"signed": signed, "signatures": [{"keyid": key_id(key.public_key()), "sig": sig}]}


def verify_document(envelope: Any, trusted: dict[str, Ed25519PublicKey]) -> dict[str, Any]:
    """Return the ``signed`` part if one signature by a trusted key verifies.

    ``trusted`` maps keyid to public key. Raises SignatureError otherwise.
    """
    if not isinstance(envelope, dict) or not isinstance(envelope.get("signed"), dict):
        raise SignatureError("Expected a signed envelope {'signed': {...}, 'signatures': [...]}")
    sigs = envelope.get("signatures")
    if not isinstance(sigs, list) or not sigs:
        raise SignatureError("Signed envelope has no signatures")
    try:
        payload = canonical_json(envelope["signed"])
    except (ValueError, TypeError) as exc:  # NaN/Infinity or other values JSON cannot carry
        raise SignatureError(f"signed document cannot be canonicalized: {exc}") from None
    seen_unknown = []
    for entry in sigs:
        if not isinstance(entry, dict):
            continue
        keyid, sig = entry.get("keyid"), entry.get("sig")
        if not isinstance(keyid, str) or not isinstance(sig, str):
            continue
        key = trusted.get(keyid)
        if key is None:
            seen_unknown.append(keyid[:12])
            continue
        try:
            key.verify(bytes.fromhex(sig), payload)
        except (InvalidSignature, ValueError):
            raise SignatureError(f"Invalid signature by key {keyid[:12]}") from None
        return dict(envelope["signed"])
    if seen_unknown:
        raise SignatureError(
            f"Signed by unknown key(s) {', '.join(seen_unknown)}; expected one of {', '.join(k[:12] for k in trusted)}"
        )
    raise SignatureError("No well-formed signature in envelope")

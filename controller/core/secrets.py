"""The keys every replica shares, read from secret files or the environment.

Outside development a replica never creates a key: a missing one is an error
that says to run ``edgefleet-controller init`` once and to give every replica
the same secrets (``EDGEFLEET_SECRETS_DIR`` or the ``EDGEFLEET_*_KEY`` variables).
In development a missing key is created on first start and the log says so.
"""

from __future__ import annotations

import logging
from pathlib import Path

from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from shared.signing import generate_private_key_file, load_private_key_file

log = logging.getLogger(__name__)


class SecretsError(Exception):
    """A shared secret is missing or unreadable; the message says what to do."""


def _check_private(path: Path) -> None:
    mode = path.stat().st_mode & 0o777
    if mode & 0o077:
        raise SecretsError(f"{path} is readable by group or others (mode {mode:o}); expected 600")


def load_ed25519(path: Path, pem: str | None, *, what: str, env: str, create: bool, strict: bool) -> Ed25519PrivateKey:
    """The key from ``pem`` (an environment variable's PEM text) or the file at ``path``.

    ``create``: make the file when it is missing (development only). ``strict``: refuse a key
    file other users can read.
    """
    if pem:
        try:
            key = serialization.load_pem_private_key(pem.encode(), password=None)
        except ValueError as exc:
            raise SecretsError(f"{env}: not a PEM private key ({exc})") from None
        if not isinstance(key, Ed25519PrivateKey):
            raise SecretsError(f"{env}: expected an Ed25519 private key, got {type(key).__name__}")
        return key
    if not path.exists():
        if not create:
            raise SecretsError(
                f"no {what} at {path} and {env} is unset: run `edgefleet-controller init --secrets-dir DIR` once, "
                "then give every replica the same secrets (EDGEFLEET_SECRETS_DIR=DIR or the key variables)"
            )
        try:
            key = generate_private_key_file(path)
        except FileExistsError:  # another process of this development setup made it first
            return load_private_key_file(path)
        log.warning("development: created the %s at %s (outside development, `edgefleet-controller init` does)", what, path)
        return key
    if strict:
        _check_private(path)
    try:
        return load_private_key_file(path)
    except (OSError, ValueError) as exc:
        raise SecretsError(f"{what} at {path}: {exc}") from None

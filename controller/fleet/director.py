"""The director: signs per-device assignments with the controller's online key."""

from __future__ import annotations

import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from controller.core.config import Settings
from controller.core.secrets import load_ed25519
from shared.features import BatchFeatureValue
from shared.messages import SCHEMA_VERSION, Assignment, Desired, Routing
from shared.signing import generate_private_key_file, key_id, load_private_key_file, public_key_hex, sign_document


class Director:
    def __init__(self, key: Ed25519PrivateKey) -> None:
        self._key = key

    @classmethod
    def from_settings(cls, settings: Settings) -> Director:
        """The shared director key (secret file or ``EDGEFLEET_DIRECTOR_KEY``); created only in development."""
        dev = settings.development
        return cls(
            load_ed25519(
                settings.director_key_path,
                settings.director_key,
                what="director key",
                env="EDGEFLEET_DIRECTOR_KEY",
                create=dev,
                strict=not dev,
            )
        )

    @classmethod
    def from_file(cls, path: Path, *, create: bool) -> Director:
        """Load the director key; create it (mode 0600) on first start when allowed."""
        if not path.exists() and create:
            return cls(generate_private_key_file(path))
        return cls(load_private_key_file(path))

    @property
    def public_key_hex(self) -> str:
        return public_key_hex(self._key.public_key())

    @property
    def key_id(self) -> str:
        return key_id(self._key.public_key())

    def sign_desired(
        self,
        device_id: str,
        counter: int,
        assignments: dict[str, Assignment],
        ttl_s: int,
        sampling: dict[str, Any] | None = None,
        routing: Routing | None = None,
        features: Sequence[BatchFeatureValue] = (),
    ) -> dict[str, Any]:
        issued = round(time.time(), 3)
        desired = Desired(
            device_id=device_id,
            counter=counter,
            issued_at=issued,
            expires_at=issued + ttl_s,
            assignments=assignments,
            sampling=sampling or {},
            routing=routing,
            features=tuple(features),
            schema=SCHEMA_VERSION,
        )
        return sign_document(desired.to_dict(), self._key)

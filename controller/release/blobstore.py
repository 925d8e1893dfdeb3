"""Content-addressed bundle storage on the local file system."""

from __future__ import annotations

import hashlib
from pathlib import Path

from shared.fsutil import atomic_write_bytes


class BlobStore:
    def __init__(self, root: Path) -> None:
        self.root = root
        root.mkdir(parents=True, exist_ok=True)

    def path(self, sha256: str) -> Path:
        return self.root / f"{sha256}.tar"

    def put(self, data: bytes) -> str:
        sha = hashlib.sha256(data).hexdigest()
        dest = self.path(sha)
        if not dest.exists():
            atomic_write_bytes(dest, data)
        return sha

    def exists(self, sha256: str) -> bool:
        return len(sha256) == 64 and all(c in "0123456789abcdef" for c in sha256) and self.path(sha256).exists()

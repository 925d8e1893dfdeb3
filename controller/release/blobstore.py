"""Content-addressed bundle storage every replica shares, behind one interface.

::

    BlobStore (Protocol)       put / exists / local_path
    ├── DatabaseBlobStore      the default: a ``blob`` table (bytea on PostgreSQL, BLOB on SQLite)
    └── S3BlobStore            an S3-compatible bucket (needs boto3; optional)

Both keep a local cache directory of the bundles this replica has served, so
downloads (with HTTP ``Range`` resume) are file responses and a bundle is read
from the shared store once per replica. The cache is disposable: a replica
started on an empty data directory refills it on demand.
"""

from __future__ import annotations

import hashlib
import re
from pathlib import Path
from typing import Any, Protocol

from sqlalchemy import Engine
from sqlmodel import Session

from controller.core.tables import BlobRow
from shared.fsutil import atomic_write_bytes

_SHA256 = re.compile(r"^[0-9a-f]{64}$")


class BlobStoreError(Exception):
    """The shared store could not be reached or refused the operation."""


def valid_sha256(sha256: str) -> bool:
    return bool(_SHA256.match(sha256))


class BlobStore(Protocol):
    def put(self, data: bytes, session: Session | None = None) -> str:
        """Store ``data``; return its sha256. With ``session``, the write joins the caller's transaction
        where the store can (the database store); idempotent for identical bytes."""
        ...

    def exists(self, sha256: str) -> bool: ...

    def local_path(self, sha256: str) -> Path | None:
        """A local file with the bundle's bytes (fetched into the cache once), or None if unknown."""
        ...


class _Cache:
    def __init__(self, root: Path) -> None:
        self.root = root
        root.mkdir(parents=True, exist_ok=True)

    def path(self, sha256: str) -> Path:
        return self.root / f"{sha256}.tar"

    def get(self, sha256: str) -> Path | None:
        p = self.path(sha256)
        return p if p.is_file() else None

    def put(self, sha256: str, data: bytes) -> Path:
        if hashlib.sha256(data).hexdigest() != sha256:  # never serve bytes that do not match their name
            raise BlobStoreError(f"stored bundle {sha256[:12]} does not match its sha256")
        p = self.path(sha256)
        atomic_write_bytes(p, data)
        return p


class DatabaseBlobStore:
    """Bundles in the shared database; the default, so replicas need nothing but the database."""

    def __init__(self, engine: Engine, cache_dir: Path) -> None:
        self.engine = engine
        self.cache = _Cache(cache_dir)

    def put(self, data: bytes, session: Session | None = None) -> str:
        sha = hashlib.sha256(data).hexdigest()
        if session is not None:
            if session.get(BlobRow, sha) is None:
                session.add(BlobRow(sha256=sha, length=len(data), data=data))
                session.flush()
            return sha
        with Session(self.engine) as own:
            if own.get(BlobRow, sha) is None:
                own.add(BlobRow(sha256=sha, length=len(data), data=data))
                own.commit()
        return sha

    def exists(self, sha256: str) -> bool:
        if not valid_sha256(sha256):
            return False
        if self.cache.get(sha256) is not None:
            return True
        with Session(self.engine) as session:
            return session.get(BlobRow, sha256) is not None

    def local_path(self, sha256: str) -> Path | None:
        if not valid_sha256(sha256):
            return None
        cached = self.cache.get(sha256)
        if cached is not None:
            return cached
        with Session(self.engine) as session:
            row = session.get(BlobRow, sha256)
            data = None if row is None else bytes(row.data)
        return None if data is None else self.cache.put(sha256, data)


class S3BlobStore:
    """Bundles in an S3-compatible bucket (``EDGEFLEET_BLOB_STORE=s3``), objects named ``<prefix><sha256>.tar``.

    Writes are not transactional with the database: a bundle is uploaded before its
    registration commits, so a failed registration can leave an unreferenced object
    (harmless: content-addressed, re-used if the same bytes come again).
    """

    def __init__(
        self,
        bucket: str,
        cache_dir: Path,
        *,
        prefix: str = "bundles/",
        endpoint_url: str | None = None,
        region: str | None = None,
        client: Any = None,
    ) -> None:
        if not bucket:
            raise BlobStoreError("EDGEFLEET_BLOB_STORE=s3 needs EDGEFLEET_S3_BUCKET")
        if client is None:
            try:
                import boto3
            except ImportError:
                raise BlobStoreError("EDGEFLEET_BLOB_STORE=s3 needs boto3: pip install boto3") from None
            client = boto3.client("s3", endpoint_url=endpoint_url, region_name=region)
        self.client = client
        self.bucket = bucket
        self.prefix = prefix
        self.cache = _Cache(cache_dir)

    def _key(self, sha256: str) -> str:
        return f"{self.prefix}{sha256}.tar"

    def put(self, data: bytes, session: Session | None = None) -> str:
        sha = hashlib.sha256(data).hexdigest()
        if not self.exists(sha):
            self.client.put_object(Bucket=self.bucket, Key=self._key(sha), Body=data, ContentType="application/x-tar")
        return sha

    def exists(self, sha256: str) -> bool:
        if not valid_sha256(sha256):
            return False
        if self.cache.get(sha256) is not None:
            return True
        try:
            self.client.head_object(Bucket=self.bucket, Key=self._key(sha256))
        except Exception as exc:  # botocore's ClientError: 404 means absent, anything else is an outage
            status = getattr(exc, "response", {}).get("ResponseMetadata", {}).get("HTTPStatusCode")
            if status == 404:
                return False
            raise BlobStoreError(f"object store: {exc}") from None
        return True

    def local_path(self, sha256: str) -> Path | None:
        if not self.exists(sha256):
            return None
        cached = self.cache.get(sha256)
        if cached is not None:
            return cached
        body = self.client.get_object(Bucket=self.bucket, Key=self._key(sha256))["Body"].read()
        return self.cache.put(sha256, body)


def open_blob_store(kind: str, engine: Engine, cache_dir: Path, legacy_dir: Path | None = None, **s3: Any) -> BlobStore:
    """The store named by ``EDGEFLEET_BLOB_STORE``; bundles a single controller kept in ``legacy_dir``
    (before replicas shared them) are copied in once, so nothing registered earlier is lost."""
    store: BlobStore = S3BlobStore(cache_dir=cache_dir, **s3) if kind == "s3" else DatabaseBlobStore(engine, cache_dir)
    if legacy_dir is not None and legacy_dir.is_dir():
        for f in sorted(legacy_dir.glob("*.tar")):
            if not store.exists(f.stem):
                store.put(f.read_bytes())
    return store

"""The download seam: fetch a URL into a file, never past the declared length.

Like ``tuf.ngclient``'s fetcher: one method to implement (``_chunks``); the
public ``fetch`` enforces the length and hash and maps every other failure to
:class:`DownloadError`.
"""

from __future__ import annotations

import hashlib
import os
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path


class DownloadError(Exception):
    """The bundle could not be fetched, or what came was not what was declared."""


class LengthError(DownloadError):
    """The server sent more (or fewer) bytes than the signed length."""


class HashError(DownloadError):
    """The downloaded bytes do not hash to the signed sha256."""


class Fetcher:
    """HTTP(S) fetcher using urllib; subclasses may override ``_chunks``."""

    def __init__(self, timeout: float = 30.0, chunk_size: int = 64 * 1024) -> None:
        self.timeout = timeout  # seconds without progress
        self.chunk_size = chunk_size  # bytes

    def _chunks(self, url: str) -> Iterator[bytes]:
        req = urllib.request.Request(url, headers={"User-Agent": "edgefleet-agent"})  # noqa: S310 - director-signed URL
        with urllib.request.urlopen(req, timeout=self.timeout) as resp:  # noqa: S310 - URL is director-signed
            while chunk := resp.read(self.chunk_size):
                yield chunk

    def fetch(self, url: str, dest: Path, *, length: int, sha256: str) -> None:
        """Download ``url`` to ``dest`` (fsynced); check length and hash."""
        h = hashlib.sha256()
        got = 0
        try:
            with open(dest, "wb") as f:
                for chunk in self._chunks(url):
                    got += len(chunk)
                    if got > length:
                        raise LengthError(f"download exceeds the signed length of {length} bytes")
                    h.update(chunk)
                    f.write(chunk)
                f.flush()
                os.fsync(f.fileno())
        except DownloadError:
            raise
        except (OSError, urllib.error.URLError, ValueError) as exc:
            raise DownloadError(f"cannot download {url}: {exc}") from exc
        if got != length:
            raise LengthError(f"downloaded {got} bytes, expected {length}")
        if h.hexdigest() != sha256:
            raise HashError(f"sha256 {h.hexdigest()[:16]}… does not match the signed {sha256[:16]}…")

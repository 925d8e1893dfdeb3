"""The download seam, shared by TUF metadata and bundles.

:class:`Fetcher` implements ``tuf.ngclient.FetcherInterface`` (one method,
``_fetch``), so ``tuf.ngclient`` fetches metadata through it, and adds
:meth:`Fetcher.download` for bundles: resumable with HTTP ``Range``, never
past the declared length, above a minimum average speed, and a full disk is a
clean :class:`DiskFullError`. Exceptions (all ``tuf.api.exceptions.DownloadError``)::

    DownloadError
    ├── DownloadHTTPError        the server answered with an HTTP error
    ├── SlowRetrievalError       below the minimum speed, or no progress within the timeout
    ├── LengthError              more (or fewer) bytes than the signed length
    ├── HashError                the bytes do not hash to the signed sha256
    └── DiskFullError            no space left on the device
"""

from __future__ import annotations

import errno
import hashlib
import http.client
import os
import time
import urllib.error
from collections.abc import Callable, Iterator
from pathlib import Path

from tuf.api.exceptions import DownloadError, DownloadHTTPError, DownloadLengthMismatchError, SlowRetrievalError
from tuf.ngclient import FetcherInterface

from agent.http import ControllerHttp

__all__ = ["DiskFullError", "DownloadError", "Fetcher", "HashError", "LengthError", "SlowRetrievalError"]


class LengthError(DownloadLengthMismatchError):
    """The server sent more (or fewer) bytes than the signed length."""


class HashError(DownloadError):
    """The downloaded bytes do not hash to the signed sha256."""


class DiskFullError(DownloadError):
    """The device ran out of disk space while downloading."""


Progress = Callable[[int, int], None]


class Fetcher(FetcherInterface):
    """HTTP(S) through the agent's client (agent/http.py); subclasses may override ``_open``."""

    # pragma: no mutate start
    def __init__(
        self,
        *,
        timeout: float = 30.0,  # seconds without any byte before giving up
        min_speed: float = 1024.0,  # bytes per second, average, after the grace period
        grace: float = 3.0,  # seconds before the speed check starts
        chunk_size: int = 16 * 1024,  # bytes
        http: ControllerHttp | None = None,  # the agent's client (trusts the controller's CA); default: system store
    ) -> None:
        self.http = http or ControllerHttp(timeout=timeout)
        self.timeout = timeout
        self.min_speed = min_speed
        self.grace = grace
        self.chunk_size = chunk_size

    # pragma: no mutate end
    def _open(self, url: str, offset: int = 0) -> http.client.HTTPResponse:  # pragma: no mutate block
        headers = {"Range": f"bytes={offset}-"} if offset else {}
        try:
            return self.http.open(url, headers=headers, timeout=self.timeout)
        except ValueError as exc:
            raise DownloadError(str(exc)) from None
        except urllib.error.HTTPError as exc:
            raise DownloadHTTPError(f"HTTP {exc.code} for {url}", exc.code) from None
        except (urllib.error.URLError, OSError) as exc:
            raise DownloadError(f"cannot reach {url}: {exc}") from exc

    def _stream(self, resp: http.client.HTTPResponse, url: str) -> Iterator[bytes]:  # pragma: no mutate block
        start = time.monotonic()
        got = 0
        with resp:
            while True:
                try:
                    chunk = resp.read1(self.chunk_size)
                except TimeoutError:
                    raise SlowRetrievalError(f"no data from {url} for {self.timeout:.1f}s") from None
                except (OSError, http.client.HTTPException) as exc:
                    raise DownloadError(f"connection to {url} failed: {exc}") from exc
                if not chunk:
                    return
                got += len(chunk)
                elapsed = time.monotonic() - start
                if elapsed > self.grace and got / elapsed < self.min_speed:
                    raise SlowRetrievalError(
                        f"download from {url} at {got / elapsed:.0f} B/s, below the minimum of {self.min_speed:.0f} B/s"
                    )
                yield chunk

    def _fetch(self, url: str) -> Iterator[bytes]:  # pragma: no mutate block
        return self._stream(self._open(url), url)

    def download(self, url: str, dest: Path, *, length: int, sha256: str, progress: Progress | None = None) -> None:
        """Download ``url`` into ``dest``, resuming from what ``dest`` already holds.

        Raises a DownloadError subclass; ``dest`` keeps any valid prefix so the
        next attempt resumes (it is removed when it cannot be right).
        """
        have = dest.stat().st_size if dest.exists() else 0
        if have > length:
            dest.unlink()
            have = 0
        if have < length:
            resp = self._open(url, have)
            if have and resp.status != 206:  # server ignored Range: start again
                have = 0
            self._write(resp, url, dest, have, length, progress)
        got = dest.stat().st_size
        if got < length:  # the connection dropped: keep the prefix, the next attempt resumes
            raise DownloadError(f"connection closed after {got} of {length} bytes")
        h = hashlib.sha256()
        with open(dest, "rb") as f:
            for block in iter(lambda: f.read(1 << 20), b""):
                h.update(block)
        if h.hexdigest() != sha256:
            dest.unlink()
            if have:  # the kept prefix may be what is wrong (a torn write, another file): once more from zero
                return self.download(url, dest, length=length, sha256=sha256, progress=progress)
            raise HashError(f"sha256 {h.hexdigest()[:16]}… does not match the signed {sha256[:16]}…")

    def _write(
        self, resp: http.client.HTTPResponse, url: str, dest: Path, have: int, length: int, progress: Progress | None
    ) -> None:
        got = have
        try:
            with open(dest, "r+b" if have else "wb") as f:
                f.seek(have)
                f.truncate()
                for chunk in self._stream(resp, url):
                    got += len(chunk)
                    if got > length:
                        f.truncate(length)
                        raise LengthError(f"download exceeds the signed length of {length} bytes")
                    f.write(chunk)
                    if progress is not None:
                        f.flush()
                        progress(got, length)
                f.flush()
                os.fsync(f.fileno())
        except OSError as exc:
            if exc.errno in (errno.ENOSPC, errno.EDQUOT, errno.EFBIG):
                dest.unlink(missing_ok=True)
                raise DiskFullError(f"no space left on the device after {got} of {length} bytes ({exc.strerror})") from None
            raise DownloadError(f"cannot write {dest}: {exc}") from exc

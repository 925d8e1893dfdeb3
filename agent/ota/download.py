"""The DOWNLOADING step's work: the image repository must vouch for the assignment, then the bundle is fetched.

Runs in the agent's short-lived update process (``agent.ota.worker``, the default) or in
the agent itself (``[download] isolated = false``, and the in-process updater of tests):
the same function either way. It imports python-tuf, so only those two ever load it.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from pathlib import Path

from agent.ota.agreement import TrustError, TrustUnavailable
from agent.ota.fetcher import DiskFullError, DownloadError, Fetcher, HashError, LengthError, Progress, SlowRetrievalError
from agent.ota.trust import ImageRepoClient
from shared.messages import Assignment

log = logging.getLogger(__name__)


def fetch_target(
    image_repo: ImageRepoClient,
    fetcher: Fetcher,
    a: Assignment,
    *,
    arch: str,
    dest: Path,
    attempts: int,
    on_trusted: Callable[[], None],
    progress: Progress | None,
    stored: bool = False,
) -> tuple[str | None, bool]:
    """Verify ``a`` against the image repository and download its bundle to ``dest``.

    Returns ``(None, False)`` when the bundle is on disk, else ``(reason, transient)``:
    transient failures (network, expired metadata, a full disk, a slow server) are worth
    retrying; the others are refusals. ``on_trusted`` is called once the repository agreed.
    ``stored``: the device already holds the bundle (content-addressed); it is not fetched again.
    """
    try:
        image_repo.target_for(a, arch=arch)
    except TrustError as exc:
        return str(exc), isinstance(exc, TrustUnavailable)
    on_trusted()
    if stored:
        return None, False
    for attempt in range(1, attempts + 1):
        try:
            fetcher.download(a.url, dest, length=a.length, sha256=a.sha256, progress=progress)
            return None, False
        except (LengthError, HashError) as exc:  # the bytes contradict the signed metadata
            return f"download failed: {type(exc).__name__}: {exc}", False
        except (DiskFullError, SlowRetrievalError) as exc:
            return f"download failed: {type(exc).__name__}: {exc}", True
        except DownloadError as exc:  # transient: resume from what is on disk
            if attempt == attempts:
                return f"download failed after {attempt} attempts: {type(exc).__name__}: {exc}", True
            log.warning("download attempt %d failed (%s); resuming", attempt, exc)
            time.sleep(min(2.0**attempt, 30.0))
    raise AssertionError("unreachable")


def metadata_digest(image_repo: ImageRepoClient) -> tuple[str | None, str]:
    """Refresh the release metadata now: (a digest of the verified targets, "") or (None, why it failed)."""
    try:
        return image_repo.metadata_digest(), ""
    except TrustError as exc:
        return None, str(exc)

"""Build the updater and its seams from the agent configuration.

The fetcher and the image-repository client are built on the first update, so
an agent restarting onto the models it has never loads python-tuf.
"""

from __future__ import annotations

import functools
import logging
from collections.abc import Callable
from typing import TYPE_CHECKING

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

from agent.config import AgentConfig
from agent.host import ModelHost
from agent.ota.retry import Convergence
from agent.ota.store import Store
from agent.ota.updater import Checkpoint, Report, Updater

if TYPE_CHECKING:  # the update stack (python-tuf, urllib3, securesystemslib) loads on the first update
    from agent.ota.fetcher import Fetcher
    from agent.ota.trust import ImageRepoClient

log = logging.getLogger(__name__)


def make_updater(
    cfg: AgentConfig,
    store: Store,
    host: ModelHost,
    trusted: dict[str, Ed25519PublicKey],
    report: Report,
    on_change: Callable[[], None],
    checkpoint: Checkpoint | None = None,
) -> Updater:
    """Build the updater and its seams from the agent configuration."""
    d = cfg.download
    root = None if cfg.image_repo is None else cfg.image_repo.root.read_bytes()  # a missing root file fails at start

    @functools.cache
    def fetcher() -> Fetcher:
        from agent.http import from_config
        from agent.ota.fetcher import Fetcher

        return Fetcher(timeout=cfg.download_timeout, min_speed=d.min_speed, grace=d.grace, http=from_config(cfg))

    def image_repo() -> ImageRepoClient:
        from agent.ota.trust import ImageRepoClient

        assert cfg.image_repo is not None and root is not None
        return ImageRepoClient(
            metadata_dir=cfg.data_dir / "tuf", metadata_url=cfg.image_repo.url, bootstrap_root=root, fetcher=fetcher()
        )

    if cfg.image_repo is None:
        log.warning("no [image_repository] configured: assignments will be rejected (no release signature to check)")
    return Updater(
        device_id=cfg.device_id,
        arch=cfg.arch,
        trusted=trusted,
        store=store,
        host=host,
        fetcher=fetcher,  # both built on the first update: an agent restarting onto the models
        image_repo=None if cfg.image_repo is None else image_repo,  # it has never loads python-tuf
        report=report,
        on_change=on_change,
        threads=cfg.inference_threads,
        health=cfg.health,
        download_attempts=d.attempts,
        checkpoint=checkpoint,
        retry=Convergence(d.retry_base_s, d.retry_max_s),
        metadata_poll_s=d.metadata_poll_s,
    )

"""Build the updater and its seams from the agent configuration.

By default (``[download] isolated = true``) the update stack runs in short-lived child
processes (:mod:`agent.ota.worker`): the agent itself never imports python-tuf, urllib3,
``http.client`` or ``cryptography``. Otherwise the fetcher and the image-repository
client are built on the first update, so an agent restarting onto the models it has
never loads python-tuf.
"""

from __future__ import annotations

import functools
import logging
from collections.abc import Callable
from typing import TYPE_CHECKING

from agent.config import AgentConfig
from agent.host import ModelHost
from agent.ota.retry import Convergence
from agent.ota.store import Store
from agent.ota.updater import Checkpoint, Report, Updater, Verify
from agent.ota.worker import UpdateWorker

if TYPE_CHECKING:  # the update stack (python-tuf, urllib3, securesystemslib) loads on the first update
    from agent.ota.fetcher import Fetcher
    from agent.ota.trust import ImageRepoClient
    from agent.runtime.cache import ModelCache

log = logging.getLogger(__name__)


def make_updater(
    cfg: AgentConfig,
    store: Store,
    host: ModelHost,
    trusted: Verify,
    report: Report,
    on_change: Callable[[], None],
    checkpoint: Checkpoint | None = None,
    models: ModelCache | None = None,
) -> Updater:
    """Build the updater and its seams from the agent configuration.

    ``trusted``: the director keys (key id -> public key), or a function that returns the
    signed part of a verified envelope; with ``[download] isolated`` the update process checks."""
    d = cfg.download
    if cfg.image_repo is not None:
        cfg.image_repo.root.read_bytes()  # a missing root file fails at start
    worker = UpdateWorker(cfg) if d.isolated else None

    @functools.cache
    def fetcher() -> Fetcher:
        return make_fetcher(cfg)

    def image_repo() -> ImageRepoClient:
        repo = make_image_repo(cfg, fetcher())
        assert repo is not None
        return repo

    if cfg.image_repo is None:
        log.warning("no [image_repository] configured: assignments will be rejected (no release signature to check)")
    return Updater(
        device_id=cfg.device_id,
        arch=cfg.arch,
        trusted=worker.verify if worker is not None else trusted,
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
        models=models,
        worker=worker,
        listing=None if cfg.image_repo is None else cfg.data_dir / "tuf",
        vouched_max_age=d.vouched_max_age_s,
        refresh_s=d.refresh_s,
    )


def make_fetcher(cfg: AgentConfig) -> Fetcher:
    from agent.http import from_config
    from agent.ota.fetcher import Fetcher

    d = cfg.download
    return Fetcher(timeout=cfg.download_timeout, min_speed=d.min_speed, grace=d.grace, http=from_config(cfg))


def make_image_repo(cfg: AgentConfig, fetcher: Fetcher) -> ImageRepoClient | None:
    """The TUF client of ``[image_repository]``, or None when the config has none."""
    if cfg.image_repo is None:
        return None
    from agent.ota.trust import ImageRepoClient

    root = cfg.image_repo.root.read_bytes()
    url = cfg.image_repo.url
    return ImageRepoClient(metadata_dir=cfg.data_dir / "tuf", metadata_url=url, bootstrap_root=root, fetcher=fetcher)

"""Controller settings from the environment (``EDGEFLEET_*``) or a .env file.

Nothing is built at import time: ``Settings()`` is constructed by the server
entry point or by a test and passed to ``create_app``.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Literal
from urllib.parse import urlsplit

from pydantic import Field, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

PLACEHOLDER_TOKENS = {"", "change-me", "changeme", "dev-admin-token", "test-admin-token", "admin", "secret", "token"}
MIN_ADMIN_TOKEN_CHARS = 16  # `openssl rand -hex 24` gives 48
DEFAULT_ENVIRONMENT: Literal["development", "production"] = "development"
LOCAL_HOSTS = {"localhost", "127.0.0.1", "::1", "0.0.0.0", "testserver"}
log = logging.getLogger(__name__)


class Settings(BaseSettings):
    # hide_input_in_errors: a validation error would otherwise quote the input, secrets included.
    model_config = SettingsConfigDict(env_prefix="EDGEFLEET_", env_file=".env", extra="ignore", hide_input_in_errors=True)

    environment: Literal["development", "production"] = Field(
        DEFAULT_ENVIRONMENT, description="development (placeholders and plain transports allowed) | production"
    )
    database_url: str = Field("sqlite:///./edgefleet-data/controller.db", repr=False)  # may carry a password
    data_dir: Path = Path("./edgefleet-data")
    public_url: str = Field("http://127.0.0.1:8000", description="base URL devices download bundles from")
    broker_host: str = "127.0.0.1"
    broker_port: int = 1883
    mqtt_enabled: bool = True
    admin_token: str = Field("dev-admin-token", repr=False)  # refused outside development; never logged
    # --- expiry periods: the leader re-signs each when less than half of it is left (docs/operations.md) ---
    desired_ttl_s: int = Field(7 * 24 * 3600, ge=2, description="validity of a signed desired state, seconds")
    tuf_timestamp_expiry_s: int = Field(24 * 3600, ge=2, description="validity of TUF timestamp metadata, seconds")
    tuf_snapshot_expiry_s: int = Field(7 * 24 * 3600, ge=2, description="validity of TUF snapshot metadata, seconds")
    tuf_targets_expiry_s: int = Field(90 * 24 * 3600, ge=60, description="validity of TUF targets metadata, seconds")
    tuf_targets_warn_s: int = Field(
        21 * 24 * 3600,
        ge=0,
        description="offline release keys: warn, and stage a renewal to sign, this long before published targets lapse (s)",
    )
    # --- shared secrets and artifacts (every replica reads the same; docs/operations.md "Replicas") ---
    secrets_dir: Path | None = Field(
        None, description="keys/director.pem, keys/tuf/online.pem, ca/, tuf/ written by `edgefleet-controller init`"
    )
    director_key: str | None = Field(None, repr=False, description="the director's Ed25519 key (PEM) instead of a file")
    tuf_online_key: str | None = Field(None, repr=False, description="the TUF snapshot/timestamp key (PEM) instead of a file")
    release_signing: Literal["online", "offline"] | None = Field(
        None, description="online: development keys sign targets; offline: `edgefleet release sign` (default outside development)"
    )
    blob_store: Literal["database", "s3"] = Field("database", description="where bundles live")
    s3_bucket: str = ""
    s3_prefix: str = "bundles/"
    s3_endpoint_url: str | None = Field(None, description="an S3-compatible endpoint (MinIO, Ceph, ...); default AWS")
    s3_region: str | None = None
    max_bundle_bytes: int = 512 * 1024 * 1024
    bundle_auth: bool = Field(False, description="bundle downloads need a device credential (shared/device_auth.py)")
    capture_quota_bytes: int = Field(64 * 1024 * 1024, ge=0, description="captured data stored per device at most, bytes")
    capture_quota_files: int = Field(10_000, ge=0, description="capture batches stored per device at most")
    # --- identity and transport security (docs/operations.md) ---
    admin_token_file: Path | None = Field(None, description="read the admin token from this file (mode 0600)")
    device_cert_days: int = Field(30, ge=1, le=825, description="validity of a device certificate, days")
    broker_tls: bool = Field(False, description="connect to the broker with mTLS (required outside development)")
    broker_ca_file: Path | None = Field(None, description="CA the broker's certificate chains to; default <data_dir>/ca/ca.pem")
    broker_cert_file: Path | None = Field(None, description="the controller's MQTT client certificate")
    broker_key_file: Path | None = Field(None, description="the controller's MQTT client key (mode 0600)")
    broker_key: str | None = Field(None, repr=False, description="the controller's MQTT client key (PEM) instead of a file")
    broker_crl_file: Path | None = Field(None, description="where the broker reads its CRL; written on every revocation")
    broker_pid_file: Path | None = Field(None, description="Mosquitto's pid_file: SIGHUP after a revocation")
    tls_cert_file: Path | None = Field(None, description="HTTPS certificate (PEM) for the API")
    tls_key_file: Path | None = Field(None, description="HTTPS private key (PEM, mode 0600) for the API")
    tls_offloaded: bool = Field(False, description="a reverse proxy terminates TLS in front of the API")
    mqtt_client_id: str | None = Field(
        None, max_length=64, description="unique per replica; default: edgefleet-controller-<replica id>"
    )
    mqtt_share_group: str = Field(
        "controllers", pattern=r"^[A-Za-z0-9_-]{1,64}$", description="the shared-subscription group every replica joins"
    )
    mqtt_stall_s: float = Field(
        60.0, gt=0, le=3600, description="a receive callback running longer than this marks the replica unhealthy"
    )
    telemetry_window_s: int = Field(60, ge=1, le=86400, description="aggregate window, seconds")
    telemetry_late_horizon_s: int = Field(
        30 * 24 * 3600, ge=60, description="a window this much later than newer ones from its device still counts once"
    )
    telemetry_max_age_s: float = Field(
        30 * 86400, gt=0, description="telemetry windows that started longer ago than this are refused, seconds"
    )
    telemetry_max_ahead_s: float = Field(
        3600, gt=0, description="telemetry windows that start further ahead of the controller's clock are refused, seconds"
    )
    ingest_batch_max: int = Field(5000, ge=1, description="telemetry windows per database batch at most")
    replica_id: str | None = Field(
        None, max_length=40, description="this replica's name in leadership and metrics; default: random per process"
    )
    experiment_interval_s: float = Field(60.0, ge=0.1, le=86400, description="seconds between looks at running experiments")
    leader_lease_s: float = Field(10.0, ge=0.5, le=300, description="leader lease; a dead leader is replaced within this")
    # --- monitoring (controller/monitoring/, docs/operations.md) ---
    monitor_interval_s: float = Field(30.0, gt=0, le=3600, description="how often the leader evaluates drift and SLOs")
    monitor_drift_windows: int = Field(3, ge=1, le=1440, description="latest complete windows merged for the drift check")
    monitor_settle_windows: int = Field(
        10,
        ge=0,
        le=1440,
        description="windows the monitor lets pass before judging one: agents outside rollouts send up to 10 a message",
    )
    monitor_webhook_url: str | None = Field(None, description="POST alert transitions here as JSON (optional)")
    rollout_interval_s: float = Field(60.0, gt=0, le=3600, description="rollout analysis interval, seconds (leader job)")
    rollout_watch_interval_s: float | None = Field(
        None,
        ge=0,
        le=3600,
        description="quick looks between rollout analyses (fail only: agents' rollbacks, always-valid tests), "
        "seconds; default a quarter of the interval, 0 turns them off",
    )
    rollout_window_retention_s: float = Field(
        7 * 86400.0,
        gt=0,
        description="per-device rollout windows older than this are pruned, seconds (an open stage keeps its own)",
    )
    # --- pipeline: automatic retraining (controller/pipeline/, docs/pipeline.md) ---
    pipeline_enabled: bool = Field(False, description="the leader runs the retraining policy (decisions, runs, hand-over)")
    pipeline_interval_s: float = Field(300.0, gt=0, le=86400, description="how often the leader evaluates the policy, seconds")
    pipeline_window_s: float = Field(3600.0, gt=0, description="policy window for per-device drift, seconds")
    pipeline_compact_interval_s: float = Field(
        3600.0, gt=0, le=86400, description="how often the leader compacts small sample Parquet files, seconds (ADR 0081)"
    )
    pipeline_compact_small_bytes: int = Field(16 << 20, ge=1, description="a sample file under this many bytes is merged")
    pipeline_compact_target_bytes: int = Field(128 << 20, ge=1, description="a merged file takes inputs up to this many bytes")
    pipeline_compact_max_open_files: int = Field(
        256, ge=1, description="today's partition is compacted too once it has more small files than this"
    )
    pipeline_compact_closed_after_s: float = Field(
        3600.0, ge=0, description="a day's partition is closed (compacted) this long after the day ended, seconds"
    )
    pipeline_drift_windows: int = Field(3, ge=1, le=1000, description="drift in this many windows in a row triggers")
    pipeline_drift_device_share: float = Field(0.5, gt=0, le=1, description="share of a cohort's judged devices drifting")
    pipeline_min_device_samples: int = Field(30, ge=1, description="captured samples a device needs in a window to be judged")
    pipeline_accuracy_drop: float = Field(0.05, gt=0, le=1, description="accuracy drop below the incumbent's that triggers")
    pipeline_min_new_labels: int = Field(1000, ge=0, description="new labelled samples that trigger (0: never)")
    pipeline_schedule_s: float = Field(0.0, ge=0, description="retrain at least this often, seconds (0: no schedule)")
    pipeline_cooldown_s: float = Field(86400.0, ge=0, description="wait after a run before the next, doubled per failed run")
    pipeline_backoff_max_s: float = Field(7 * 86400.0, ge=0, description="the longest wait after runs without a blessed model")
    pipeline_run_timeout_s: float = Field(6 * 3600.0, gt=0, description="a run without a result after this has failed")
    pipeline_runner: Literal["inprocess", "kubernetes"] = Field("inprocess", description="where training runs")
    pipeline_k8s_image: str = Field("edgefleet-controller:0.1.0", description="image of the Kubernetes Job (has the train extra)")
    pipeline_k8s_namespace: str = "default"
    pipeline_k8s_data_claim: str = Field("edgefleet-data", description="PersistentVolumeClaim with the data directory")
    pipeline_epochs: int = Field(40, ge=1, le=10_000, description="training epochs")
    pipeline_seed: int = Field(0, description="training seed (same data and seed: same model)")
    pipeline_min_labelled: int = Field(200, ge=1, description="quality gate: labelled samples a dataset needs")
    pipeline_bless_tolerance: float = Field(0.01, ge=0, le=1, description="a slice may be this much less accurate")
    pipeline_bless_alpha: float = Field(
        0.1, gt=0, le=1, description="a slice is worse only when a paired sign test says so at this level"
    )
    pipeline_recent_s: float = Field(
        86400.0, gt=0, description="samples this recent: the fleet evaluation set (held out) and a new model's drift reference"
    )
    pipeline_reference_min_rows: int = Field(
        200, ge=1, description="training samples a new model's drift reference wants (fewer recent: all of them, ADR 0079)"
    )
    pipeline_auto_rollout: bool = Field(True, description="start a rollout to the triggering cohort once approved")

    @model_validator(mode="after")
    def _refuse_placeholders(self) -> Settings:
        if urlsplit(self.public_url).scheme not in ("http", "https") or not urlsplit(self.public_url).hostname:
            raise ValueError(f"EDGEFLEET_PUBLIC_URL: expected an http(s) URL devices can reach, got {self.public_url!r}")
        if self.admin_token_file is not None:
            self.admin_token = _read_secret(
                self.admin_token_file, "EDGEFLEET_ADMIN_TOKEN_FILE", strict=self.environment != "development"
            )
        if (self.tls_cert_file is None) != (self.tls_key_file is None):
            raise ValueError("set both EDGEFLEET_TLS_CERT_FILE and EDGEFLEET_TLS_KEY_FILE, or neither")
        if self.environment == "development":
            return self
        if self.admin_token.strip().lower() in PLACEHOLDER_TOKENS:
            raise ValueError("EDGEFLEET_ADMIN_TOKEN is a placeholder; set a real secret outside development")
        if len(self.admin_token) < MIN_ADMIN_TOKEN_CHARS:
            raise ValueError(
                f"EDGEFLEET_ADMIN_TOKEN is shorter than {MIN_ADMIN_TOKEN_CHARS} characters; "
                "use a random secret outside development (e.g. `openssl rand -hex 24`)"
            )
        if self.tls_cert_file is None and not self.tls_offloaded:
            raise ValueError(
                "the API must be served over TLS outside development: set EDGEFLEET_TLS_CERT_FILE and "
                "EDGEFLEET_TLS_KEY_FILE, or EDGEFLEET_TLS_OFFLOADED=true behind a TLS-terminating proxy"
            )
        if not self.broker_tls:
            raise ValueError("the broker connection must use mTLS outside development: set EDGEFLEET_BROKER_TLS=true")
        for name, key in (("EDGEFLEET_TLS_KEY_FILE", self.tls_key_file), ("EDGEFLEET_BROKER_KEY_FILE", self.broker_key_file)):
            if key is not None:
                _check_private(key, name)
        return self

    def startup_lines(self) -> list[tuple[int, str]]:
        """(log level, line) said once at start: the environment and whether it was chosen or defaulted."""
        chosen = "environment" in self.model_fields_set
        how = "set by EDGEFLEET_ENVIRONMENT" if chosen else "the default: EDGEFLEET_ENVIRONMENT is not set"
        lines = [(logging.INFO, f"environment: {self.environment} ({how})")]
        if self.environment == "development":
            weak = [
                *(["the admin token is the well-known placeholder"] if self.admin_token in PLACEHOLDER_TOKENS else []),
                *(["the API is plain HTTP"] if self.tls_cert_file is None and not self.tls_offloaded else []),
                *(["the broker connection has no TLS"] if not self.broker_tls else []),
            ]
            if weak:
                lines.append(
                    (
                        logging.WARNING,
                        "development mode: " + "; ".join(weak) + ". Never expose this controller; "
                        "set EDGEFLEET_ENVIRONMENT=production for a deployment (it refuses placeholders and plain transports)",
                    )
                )
        elif self.mqtt_share_group == "controllers":
            lines.append(
                (
                    logging.WARNING,
                    "EDGEFLEET_MQTT_SHARE_GROUP is the default 'controllers': a device can join that shared-subscription "
                    "group and take a share of every device's messages; set a random name on every replica "
                    "(python -m controller.identity.broker_setup prints one)",
                )
            )
        return lines

    @property
    def development(self) -> bool:
        return self.environment == "development"

    @property
    def secrets(self) -> Path:
        """Where the shared secrets live: ``EDGEFLEET_SECRETS_DIR``, in development the data directory."""
        return self.secrets_dir or self.data_dir

    @property
    def ca_dir(self) -> Path:
        return self.secrets / "ca"

    @property
    def director_key_path(self) -> Path:
        return self.secrets / "keys" / "director.pem"

    @property
    def tuf_online_key_path(self) -> Path:
        return self.secrets / "keys" / "tuf" / "online.pem"

    @property
    def tuf_initial_dir(self) -> Path:
        """``1.root.json`` and ``1.targets.json`` from ``init``: seed the database's image repository."""
        return self.secrets / "tuf"

    @property
    def dev_tuf_keys_dir(self) -> Path:
        """Development only: every TUF key (root, release, online) in PEM files, beside the other secrets."""
        return self.secrets / "keys" / "tuf"

    @property
    def signs_releases_online(self) -> bool:
        return (self.release_signing or ("online" if self.development else "offline")) == "online"

    @property
    def blob_cache_dir(self) -> Path:
        """A local, disposable cache of bundles served by this replica."""
        return self.data_dir / "cache" / "bundles"

    def public_url_warning(self) -> str | None:
        """A warning when devices are told to download from this machine itself outside development."""
        host = urlsplit(self.public_url).hostname or ""
        if not self.development and (host in LOCAL_HOSTS or host.startswith("127.")):
            return (
                f"EDGEFLEET_PUBLIC_URL is {self.public_url!r}: devices cannot reach a loopback address; "
                "set it to the address devices use to reach the controller (its load balancer)"
            )
        return None


def _check_private(path: Path, name: str) -> None:
    try:
        mode = path.stat().st_mode
    except OSError as exc:
        raise ValueError(f"{name}: cannot read {path}: {exc.strerror}") from None
    if mode & 0o077:
        raise ValueError(f"{name}: {path} is readable by group or others (mode {mode & 0o777:o}); expected 600")


def _read_secret(path: Path, name: str, *, strict: bool) -> str:
    if strict:
        _check_private(path, name)
    try:
        return path.read_text().strip()
    except OSError as exc:
        raise ValueError(f"{name}: cannot read {path}: {exc.strerror}") from None

"""Controller settings from the environment (``EDGEFLEET_*``) or a .env file.

Nothing is built at import time: ``Settings()`` is constructed by the server
entry point or by a test and passed to ``create_app``.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Literal

from pydantic import Field, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

PLACEHOLDER_TOKENS = {"", "change-me", "changeme", "dev-admin-token", "test-admin-token", "admin", "secret", "token"}
MIN_ADMIN_TOKEN_CHARS = 16  # `openssl rand -hex 24` gives 48
DEFAULT_ENVIRONMENT: Literal["development", "production"] = "development"


class Settings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="EDGEFLEET_", env_file=".env", extra="ignore")

    environment: Literal["development", "production"] = Field(
        DEFAULT_ENVIRONMENT, description="development (placeholders and plain transports allowed) | production"
    )
    database_url: str = "sqlite:///./edgefleet-data/controller.db"
    data_dir: Path = Path("./edgefleet-data")
    public_url: str = Field("http://127.0.0.1:8000", description="base URL devices download bundles from")
    broker_host: str = "127.0.0.1"
    broker_port: int = 1883
    mqtt_enabled: bool = True
    admin_token: str = Field("dev-admin-token", repr=False)  # refused outside development; never logged
    desired_ttl_s: int = Field(7 * 24 * 3600, description="validity of a signed desired state, seconds")
    max_bundle_bytes: int = 512 * 1024 * 1024
    # --- identity and transport security (docs/operations.md) ---
    admin_token_file: Path | None = Field(None, description="read the admin token from this file (mode 0600)")
    device_cert_days: int = Field(30, ge=1, le=825, description="validity of a device certificate, days")
    broker_tls: bool = Field(False, description="connect to the broker with mTLS (required outside development)")
    broker_ca_file: Path | None = Field(None, description="CA the broker's certificate chains to; default <data_dir>/ca/ca.pem")
    broker_cert_file: Path | None = Field(None, description="the controller's MQTT client certificate")
    broker_key_file: Path | None = Field(None, description="the controller's MQTT client key (mode 0600)")
    broker_crl_file: Path | None = Field(None, description="where the broker reads its CRL; written on every revocation")
    broker_pid_file: Path | None = Field(None, description="Mosquitto's pid_file: SIGHUP after a revocation")
    tls_cert_file: Path | None = Field(None, description="HTTPS certificate (PEM) for the API")
    tls_key_file: Path | None = Field(None, description="HTTPS private key (PEM, mode 0600) for the API")
    tls_offloaded: bool = Field(False, description="a reverse proxy terminates TLS in front of the API")
    mqtt_client_id: str | None = Field(
        None, max_length=64, description="stable per replica: the broker keeps its session and queue across restarts"
    )
    telemetry_window_s: int = Field(60, ge=1, le=86400, description="aggregate window, seconds")
    ingest_batch_max: int = Field(5000, ge=1, description="telemetry windows per database batch at most")
    replica_id: str | None = Field(
        None, max_length=40, description="this replica's name in leadership and metrics; default: random per process"
    )
    leader_lease_s: float = Field(10.0, ge=0.5, le=300, description="leader lease; a dead leader is replaced within this")

    @model_validator(mode="after")
    def _refuse_placeholders(self) -> Settings:
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
        return lines

    @property
    def ca_dir(self) -> Path:
        return self.data_dir / "ca"

    @property
    def director_key_path(self) -> Path:
        return self.data_dir / "keys" / "director.pem"

    @property
    def blob_dir(self) -> Path:
        return self.data_dir / "bundles"


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

"""Controller settings from the environment (``EDGEFLEET_*``) or a .env file.

Nothing is built at import time: ``Settings()`` is constructed by the server
entry point or by a test and passed to ``create_app``.
"""

from __future__ import annotations

from pathlib import Path

from pydantic import Field, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

PLACEHOLDER_TOKENS = {"", "change-me", "changeme", "dev-admin-token"}


class Settings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="EDGEFLEET_", env_file=".env", extra="ignore")

    environment: str = Field("development", description="development | production")
    database_url: str = "sqlite:///./edgefleet-data/controller.db"
    data_dir: Path = Path("./edgefleet-data")
    public_url: str = Field("http://127.0.0.1:8000", description="base URL devices download bundles from")
    broker_host: str = "127.0.0.1"
    broker_port: int = 1883
    mqtt_enabled: bool = True
    admin_token: str = "dev-admin-token"  # noqa: S105 - refused outside development
    desired_ttl_s: int = Field(7 * 24 * 3600, description="validity of a signed desired state, seconds")
    max_bundle_bytes: int = 512 * 1024 * 1024
    mqtt_client_id: str | None = Field(
        None, max_length=64, description="stable per replica: the broker keeps its session and queue across restarts"
    )
    telemetry_window_s: int = Field(60, ge=1, le=86400, description="aggregate window, seconds")
    ingest_batch_max: int = Field(5000, ge=1, description="telemetry windows per database batch at most")

    @model_validator(mode="after")
    def _refuse_placeholders(self) -> Settings:
        if self.environment != "development" and self.admin_token in PLACEHOLDER_TOKENS:
            raise ValueError("EDGEFLEET_ADMIN_TOKEN is a placeholder; set a real secret outside development")
        return self

    @property
    def director_key_path(self) -> Path:
        return self.data_dir / "keys" / "director.pem"

    @property
    def blob_dir(self) -> Path:
        return self.data_dir / "bundles"

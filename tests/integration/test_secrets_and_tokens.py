"""No secret reaches an error message or a log line; API tokens can expire."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from datetime import datetime, timezone
from pathlib import Path

import pytest
from pydantic import ValidationError

from controller.core.config import Settings
from tests.controller_app import running_api, settings_for

pytestmark = [pytest.mark.integration]
REPO = Path(__file__).resolve().parents[2]
TOKEN = "Sup3rSecretTokenValue-0123456789abcdef"
DB_PASSWORD = "dbPassw0rd-9876543210"


def fragments(secret: str, n: int = 6) -> list[str]:
    return [secret[i : i + n] for i in range(len(secret) - n + 1)]


def assert_no_secret(text: str) -> None:
    for secret in (TOKEN, DB_PASSWORD):
        leaked = [f for f in fragments(secret) if f in text]
        assert not leaked, f"secret fragments {leaked[:3]} in: {text[:500]}"


@pytest.mark.parametrize(
    "bad",
    [
        {"environment": "production"},  # refused: no TLS (the model validator sees every input)
        {"environment": "staging"},
        {"broker_port": "not-a-port"},
        {"environment": "production", "admin_token": "short"},
    ],
)
def test_settings_errors_never_quote_secrets(bad: dict[str, str]) -> None:
    kw = {"admin_token": TOKEN, "database_url": f"postgresql+psycopg://edge:{DB_PASSWORD}@db/edge", **bad}
    with pytest.raises(ValidationError) as err:
        Settings(**kw)
    assert_no_secret(str(err.value))
    assert_no_secret(repr(err.value.errors(include_input=False)))
    ok = Settings(admin_token=TOKEN, database_url=kw["database_url"])
    assert_no_secret(repr(ok) + str(ok))


def test_the_controller_process_refusing_bad_settings_prints_no_secret(tmp_path) -> None:
    env = {
        "PATH": os.environ["PATH"],
        "PYTHONPATH": str(REPO),
        "EDGEFLEET_ENVIRONMENT": "production",
        "EDGEFLEET_ADMIN_TOKEN": TOKEN,
        "EDGEFLEET_DATABASE_URL": f"postgresql+psycopg://edge:{DB_PASSWORD}@db/edge",
        "EDGEFLEET_DATA_DIR": str(tmp_path),
    }
    r = subprocess.run([sys.executable, "-m", "controller", "--port", "1"], env=env, capture_output=True, text=True, timeout=60)
    assert r.returncode == 2, r.stderr
    assert "refusing to start" in r.stderr
    assert_no_secret(r.stdout + r.stderr)


def test_api_tokens_expire(tmp_path, database_url, mosquitto) -> None:
    with running_api(settings_for(tmp_path, database_url, mosquitto.port)) as api:
        short = api.admin.post("/v1/tokens", json={"principal": "temp", "role": "viewer", "ttl_s": 6}).json()
        forever = api.admin.post("/v1/tokens", json={"principal": "keeper", "role": "viewer"}).json()
        assert short["expires_at"] is not None and forever["expires_at"] is None
        for t in (short, forever):
            assert api.admin.get("/v1/whoami", headers={"Authorization": f"Bearer {t['token']}"}).status_code == 200
        # until the expiry the server set (its clock at the POST, which may come late on a loaded machine)
        expires = datetime.fromisoformat(short["expires_at"].replace("Z", "+00:00"))
        expires = expires if expires.tzinfo else expires.replace(tzinfo=timezone.utc)
        time.sleep(max(0.0, (expires - datetime.now(timezone.utc)).total_seconds() + 0.3))
        r = api.admin.get("/v1/whoami", headers={"Authorization": f"Bearer {short['token']}"})
        assert r.status_code == 401 and "expired" in r.json()["detail"]
        assert api.admin.get("/v1/whoami", headers={"Authorization": f"Bearer {forever['token']}"}).status_code == 200
        listed = {t["principal"]: t for t in api.admin.get("/v1/tokens").json()}
        assert listed["temp"]["expires_at"] is not None
        assert json.dumps(listed).count(short["token"]) == 0

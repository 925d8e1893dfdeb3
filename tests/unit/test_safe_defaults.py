"""Safe defaults of the controller: placeholders refused outside development, the environment said at start."""

from __future__ import annotations

import logging
import os
import subprocess
import sys
from pathlib import Path

import pytest
from pydantic import ValidationError

from controller.core.config import MIN_ADMIN_TOKEN_CHARS, PLACEHOLDER_TOKENS, Settings

pytestmark = [pytest.mark.unit]

REPO = Path(__file__).resolve().parents[2]


def production(**kw: object) -> Settings:
    return Settings(**{"environment": "production", "tls_offloaded": True, "broker_tls": True, **kw})  # type: ignore[arg-type]


@pytest.mark.parametrize("token", sorted(PLACEHOLDER_TOKENS | {"Change-Me", " dev-admin-token "}))
def test_production_refuses_every_placeholder_admin_token(token: str) -> None:
    with pytest.raises(ValidationError, match="placeholder|shorter than"):
        production(admin_token=token)


def test_production_refuses_a_short_admin_token_and_accepts_one_of_the_minimum_length() -> None:
    with pytest.raises(ValidationError, match=f"shorter than {MIN_ADMIN_TOKEN_CHARS}"):
        production(admin_token="x" * (MIN_ADMIN_TOKEN_CHARS - 1))
    assert production(admin_token="x" * MIN_ADMIN_TOKEN_CHARS).environment == "production"


def test_an_unknown_environment_is_refused_not_treated_as_development() -> None:
    with pytest.raises(ValidationError, match="development"):
        Settings(environment="prod")  # type: ignore[arg-type]


def test_the_default_environment_is_said_to_be_a_default_with_what_it_allows(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("EDGEFLEET_ENVIRONMENT", raising=False)
    monkeypatch.delenv("EDGEFLEET_ADMIN_TOKEN", raising=False)
    lines = Settings(_env_file=None).startup_lines()  # type: ignore[call-arg]
    assert lines[0] == (logging.INFO, "environment: development (the default: EDGEFLEET_ENVIRONMENT is not set)")
    level, warning = lines[1]
    assert level == logging.WARNING
    assert "well-known placeholder" in warning and "plain HTTP" in warning and "EDGEFLEET_ENVIRONMENT=production" in warning


def test_a_chosen_production_environment_says_so_without_warnings() -> None:
    s = production(admin_token="a" * 40, mqtt_share_group="edgefleet-" + "ab" * 16)
    assert s.startup_lines() == [(logging.INFO, "environment: production (set by EDGEFLEET_ENVIRONMENT)")]


def test_production_warns_about_a_guessable_share_group() -> None:
    lines = production(admin_token="a" * 40).startup_lines()
    assert [lvl for lvl, _ in lines] == [logging.INFO, logging.WARNING]
    assert "EDGEFLEET_MQTT_SHARE_GROUP" in lines[1][1]


def _controller(env: dict[str, str], tmp_path: Path) -> subprocess.Popen[str]:
    clean = {k: v for k, v in os.environ.items() if not k.startswith("EDGEFLEET_")}
    clean.update({"PYTHONPATH": str(REPO), "EDGEFLEET_DATA_DIR": str(tmp_path), "EDGEFLEET_MQTT_ENABLED": "false"}, **env)
    return subprocess.Popen(
        [sys.executable, "-m", "controller", "--port", "0"],
        cwd=tmp_path,
        env=clean,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )


def test_the_real_process_refuses_a_placeholder_token_in_production_with_one_clear_line(tmp_path: Path) -> None:
    p = _controller(
        {"EDGEFLEET_ENVIRONMENT": "production", "EDGEFLEET_ADMIN_TOKEN": "dev-admin-token", "EDGEFLEET_TLS_OFFLOADED": "true"},
        tmp_path,
    )
    out, _ = p.communicate(timeout=60)
    assert p.returncode == 2, out
    assert "refusing to start" in out and "placeholder" in out
    assert "Traceback" not in out


def test_the_real_process_prints_its_defaulted_environment_at_start(tmp_path: Path) -> None:
    p = _controller({}, tmp_path)
    try:
        assert p.stdout is not None
        seen = []
        for line in p.stdout:  # the process serves until killed; read until the warning is out
            seen.append(line)
            if "development mode:" in line:
                break
        text = "".join(seen)
        assert "environment: development (the default: EDGEFLEET_ENVIRONMENT is not set)" in text, text
        assert "WARNING" in text and "well-known placeholder" in text
    finally:
        p.kill()
        p.communicate(timeout=10)  # reaps the process and closes its pipe

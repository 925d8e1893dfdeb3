"""The crash tests' pause hook is off the production path and loud when on."""

import logging
import os

import pytest

from agent.ota import testhook

pytestmark = pytest.mark.unit


def test_no_hook_without_the_environment_variable(tmp_path):
    assert testhook.from_env(tmp_path, environ={}) is None


def test_hook_warns_at_start_and_passes_other_points(tmp_path, caplog):
    with caplog.at_level(logging.WARNING, logger="agent.ota.testhook"):
        hook = testhook.from_env(tmp_path, environ={testhook.ENV: "VERIFYING@2"})
    assert hook is not None
    assert "test pause hook active: EDGEFLEET_TEST_PAUSE_AT=VERIFYING@2" in caplog.text
    hook("VERIFYING", 1)  # another version: returns at once
    hook("DOWNLOADING", 2)
    assert not (tmp_path / "paused").exists()


def _config(tmp_path, development: bool):
    from agent.config import parse_config

    return parse_config(
        {"device_id": "hook-1", "data_dir": str(tmp_path), "director_public_keys": ["11" * 32], "development": development}
    )


def test_hook_is_refused_with_an_error_on_an_agent_not_in_development(tmp_path, caplog, monkeypatch):
    from agent.cli import test_checkpoint

    monkeypatch.setenv(testhook.ENV, "VERIFYING")
    with caplog.at_level(logging.WARNING):
        assert test_checkpoint(_config(tmp_path, development=False), os.environ) is None
    errors = [r for r in caplog.records if r.levelno == logging.ERROR]
    assert len(errors) == 1 and "test pause hook is refused" in errors[0].getMessage()


def test_hook_is_armed_loudly_on_a_development_agent(tmp_path, caplog, monkeypatch):
    from agent.cli import test_checkpoint

    monkeypatch.setenv(testhook.ENV, "VERIFYING")
    with caplog.at_level(logging.WARNING):
        hook = test_checkpoint(_config(tmp_path, development=True), os.environ)
    assert hook is not None
    assert any(r.levelno == logging.WARNING and "test pause hook active" in r.getMessage() for r in caplog.records)


def test_development_defaults_to_false():
    import tempfile

    with tempfile.TemporaryDirectory() as d:
        from agent.config import parse_config

        assert parse_config({"device_id": "hook-2", "data_dir": d, "director_public_keys": ["11" * 32]}).development is False

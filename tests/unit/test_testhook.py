"""The crash tests' pause hook is off the production path and loud when on."""

import logging

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

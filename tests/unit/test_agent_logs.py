"""Agent logging: journald detection from JOURNAL_STREAM, plain and JSON lines."""

from __future__ import annotations

import io
import json
import logging
import os

import pytest

from agent import logs

pytestmark = pytest.mark.unit


def _record(msg: str = "hello %s", args: tuple[object, ...] = ("world",)) -> logging.LogRecord:
    return logging.LogRecord("agent.link", logging.WARNING, __file__, 1, msg, args, None)


def test_journald_is_detected_only_when_the_stream_is_the_journal(tmp_path):
    with open(tmp_path / "journal", "w") as journal, open(tmp_path / "other", "w") as other:
        st = os.fstat(journal.fileno())
        env = {"JOURNAL_STREAM": f"{st.st_dev}:{st.st_ino}"}
        assert logs.under_journald(journal, env)
        assert not logs.under_journald(other, env)  # e.g. stderr redirected to a file by hand
        assert not logs.under_journald(journal, {})
        assert not logs.under_journald(journal, {"JOURNAL_STREAM": "garbage"})
        assert not logs.under_journald(io.StringIO(), env)  # no file descriptor


def test_text_lines_carry_a_timestamp_unless_journald_adds_one():
    plain = logs.formatter("pi-1", "text", journald=False).format(_record())
    journal = logs.formatter("pi-1", "text", journald=True).format(_record())
    assert journal == "WARNING [pi-1] agent.link: hello world"
    assert plain.endswith(journal) and plain[:4].isdigit()  # "2026-... WARNING ..."


def test_json_lines(tmp_path):
    line = logs.formatter("pi-1", "json", journald=False).format(_record())
    obj = json.loads(line)
    assert obj["level"] == "WARNING" and obj["device_id"] == "pi-1" and obj["message"] == "hello world" and "ts" in obj
    assert "ts" not in json.loads(logs.formatter("pi-1", "json", journald=True).format(_record()))
    try:
        raise ValueError("boom")
    except ValueError:
        import sys

        rec = logging.LogRecord("agent", logging.ERROR, __file__, 1, "failed", (), sys.exc_info())
    assert "ValueError: boom" in json.loads(logs.formatter("pi-1", "json", journald=False).format(rec))["exc"]


def test_setup_installs_one_handler(tmp_path):
    root = logging.getLogger()
    saved = (root.handlers[:], root.level)
    try:
        with open(tmp_path / "log", "w") as stream:
            logs.setup("INFO", "pi-1", "json", stream=stream, env={})
            assert len(root.handlers) == 1
            logging.getLogger("agent.test").info("up")
            stream.flush()
    finally:
        root.handlers[:], _ = saved
        root.setLevel(saved[1])
    assert json.loads((tmp_path / "log").read_text())["message"] == "up"

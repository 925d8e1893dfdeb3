"""Crash-safe writes: concurrent writers of one path and a failing write never leave a mixed or partial file."""

from __future__ import annotations

import errno
import os
import threading
from pathlib import Path

import pytest

from shared.fsutil import atomic_write_bytes

pytestmark = pytest.mark.unit


def test_concurrent_writers_of_one_path_leave_one_whole_version(tmp_path: Path) -> None:
    # Two first downloads of one bundle used to share a temp name: one truncated the other's file under its rename.
    target = tmp_path / "bundle.tar"
    versions = [bytes([i]) * 3_000_000 for i in range(8)]
    errors: list[BaseException] = []

    def write(data: bytes) -> None:
        try:
            for _ in range(5):
                atomic_write_bytes(target, data)
                seen = target.read_bytes()
                assert seen in versions, f"a reader saw a mixed or partial file of {len(seen)} bytes"
        except BaseException as exc:  # surfaced below
            errors.append(exc)

    threads = [threading.Thread(target=write, args=(v,)) for v in versions]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors, errors
    assert target.read_bytes() in versions
    assert [p.name for p in tmp_path.iterdir()] == ["bundle.tar"], "temp files were left behind"


def test_a_failed_write_keeps_the_old_file_and_leaves_no_temp_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    target = tmp_path / "state.json"
    atomic_write_bytes(target, b"old")

    def full_disk(fd: int) -> None:
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    monkeypatch.setattr(os, "fsync", full_disk)
    with pytest.raises(OSError, match="No space left"):
        atomic_write_bytes(target, b"new")
    monkeypatch.undo()
    assert target.read_bytes() == b"old"
    assert [p.name for p in tmp_path.iterdir()] == ["state.json"]


def test_mode_is_applied(tmp_path: Path) -> None:
    target = tmp_path / "key"
    atomic_write_bytes(target, b"secret", mode=0o600)
    assert target.stat().st_mode & 0o777 == 0o600

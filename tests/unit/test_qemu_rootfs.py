"""The QEMU image recipe: the mirror read from apt sources, the cache key."""

from __future__ import annotations

from pathlib import Path

import pytest

from firmware_sim.qemu.rootfs import Recipe, RootfsError, apt_mirror

pytestmark = pytest.mark.unit


def test_mirror_from_deb822_sources(tmp_path: Path) -> None:
    (tmp_path / "sources.list.d").mkdir()
    (tmp_path / "sources.list.d" / "debian.sources").write_text(
        "Types: deb\nURIs: http://mirror.example/debian-security\nSuites: bookworm-security\nComponents: main\n\n"
        "Types: deb deb-src\n# a comment\nURIs: http://mirror.example/debian\nSuites: bookworm bookworm-updates\n"
    )
    assert apt_mirror("bookworm", tmp_path) == "http://mirror.example/debian"


def test_mirror_from_one_line_sources(tmp_path: Path) -> None:
    (tmp_path / "sources.list").write_text(
        "# deb http://old.example/debian bookworm main\ndeb [arch=amd64] http://mirror.example/debian bookworm main\n"
    )
    assert apt_mirror("bookworm", tmp_path) == "http://mirror.example/debian"


def test_no_source_for_the_suite_is_a_clear_error(tmp_path: Path) -> None:
    (tmp_path / "sources.list").write_text("deb http://mirror.example/debian trixie main\n")
    with pytest.raises(RootfsError, match="no apt source for suite 'bookworm'"):
        apt_mirror("bookworm", tmp_path)


def test_cache_key_follows_the_recipe_not_the_mirror() -> None:
    assert Recipe(mirror="http://a/").key() == Recipe(mirror="http://b/").key()
    assert Recipe().key() != Recipe(wheels=("numpy",)).key()

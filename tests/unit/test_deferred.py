"""Deferred modules: a placeholder until the first use of a name, then the real module, run once."""

from __future__ import annotations

import sys
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest

from agent import deferred

pytestmark = pytest.mark.unit


@pytest.fixture
def pkg(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[str]:
    """A package ``dfr_demo`` whose ``heavy`` submodule counts how often it runs."""
    root = tmp_path / "dfr_demo"
    root.mkdir()
    (root / "__init__.py").write_text("RUNS = []\n")
    (root / "heavy.py").write_text("import time\nfrom dfr_demo import RUNS\ntime.sleep(0.05)\nRUNS.append(1)\nVALUE = 42\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    yield "dfr_demo.heavy"
    for name in ("dfr_demo.heavy", "dfr_demo"):
        sys.modules.pop(name, None)


def test_import_binds_the_placeholder_and_runs_nothing(pkg):
    assert deferred.defer(pkg)
    import dfr_demo
    import dfr_demo.heavy

    assert dfr_demo.RUNS == [] and not deferred.loaded(pkg)
    assert dfr_demo.heavy.VALUE == 42  # the first name used loads it
    assert dfr_demo.RUNS == [1] and deferred.loaded(pkg)
    assert sys.modules[pkg] is dfr_demo.heavy  # the package and sys.modules hold the real module now


def test_from_import_gets_the_real_names(pkg):
    deferred.defer(pkg)
    from dfr_demo.heavy import VALUE

    assert VALUE == 42 and deferred.loaded(pkg)


def test_a_loaded_or_missing_module_is_left_alone(pkg):
    import importlib

    importlib.import_module(pkg)
    assert not deferred.defer(pkg)
    assert not deferred.defer("dfr_demo.no_such_module")
    assert "dfr_demo.no_such_module" not in sys.modules


def test_threads_using_it_at_once_run_it_once(pkg):
    deferred.defer(pkg)
    import dfr_demo

    placeholder = sys.modules[pkg]
    got: list[int] = []
    threads = [threading.Thread(target=lambda: got.append(placeholder.VALUE)) for _ in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert got == [42] * 8 and dfr_demo.RUNS == [1]


def test_a_module_that_fails_to_load_stays_deferred_and_says_why(pkg, tmp_path):
    (tmp_path / "dfr_demo" / "heavy.py").write_text("raise RuntimeError('broken on purpose')\n")
    deferred.defer(pkg)
    placeholder = sys.modules[pkg]
    with pytest.raises(RuntimeError, match="broken on purpose"):
        placeholder.VALUE  # noqa: B018
    assert sys.modules[pkg] is placeholder  # the next use tries again

"""Typed reads of a merged role summary (``shared.telemetry``): missing or odd parts read as empty."""

from __future__ import annotations

from typing import Any


def part(summary: dict[str, Any], key: str) -> dict[str, Any]:
    v = summary.get(key)
    return v if isinstance(v, dict) else {}


def count(summary: dict[str, Any], key: str) -> int:
    v = summary.get(key)
    return v if isinstance(v, int) and not isinstance(v, bool) else 0

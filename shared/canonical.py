"""Canonical JSON: the exact bytes that get hashed and signed.

Keys sorted, no insignificant whitespace, UTF-8, no NaN/Infinity. Floats are
allowed in messages but signed documents should prefer integers and strings.
"""

from __future__ import annotations

import json
from typing import Any


def canonical_json(obj: Any) -> bytes:
    return json.dumps(obj, sort_keys=True, separators=(",", ":"), ensure_ascii=False, allow_nan=False).encode("utf-8")

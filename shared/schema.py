"""A tiny strict reader for JSON objects, so messages validate without pydantic.

Every accessor raises SchemaError naming the field path, what was expected and
what came. Unknown fields are ignored (a newer minor revision may add some);
an unknown ``schema`` version is rejected by the callers.
"""

from __future__ import annotations

import math
from typing import Any

from shared.errors import SchemaError


def _tname(value: Any) -> str:
    return "null" if value is None else type(value).__name__


class Reader:
    """Typed access to one JSON object at path ``where``."""

    __slots__ = ("data", "where")

    def __init__(self, data: Any, where: str = "$") -> None:
        if not isinstance(data, dict):
            raise SchemaError(f"{where}: expected an object, got {_tname(data)}")
        self.data = data
        self.where = where

    def _get(self, key: str, optional: bool) -> Any:
        if key not in self.data or self.data[key] is None:
            if optional:
                return None
            raise SchemaError(f"{self.where}.{key}: missing required field")
        return self.data[key]

    def _fail(self, key: str, expected: str, value: Any) -> SchemaError:
        return SchemaError(f"{self.where}.{key}: expected {expected}, got {_tname(value)} {value!r:.60}")

    def string(self, key: str, *, optional: bool = False, max_len: int = 1024, choices: tuple[str, ...] = ()) -> Any:
        v = self._get(key, optional)
        if v is None:
            return None
        if not isinstance(v, str) or len(v) > max_len:
            raise self._fail(key, f"a string of at most {max_len} characters", v)
        if choices and v not in choices:
            raise self._fail(key, f"one of {', '.join(choices)}", v)
        return v

    def integer(self, key: str, *, optional: bool = False, minimum: int | None = None) -> Any:
        v = self._get(key, optional)
        if v is None:
            return None
        if not isinstance(v, int) or isinstance(v, bool):
            raise self._fail(key, "an integer", v)
        if minimum is not None and v < minimum:
            raise self._fail(key, f"an integer >= {minimum}", v)
        return v

    def number(self, key: str, *, optional: bool = False, minimum: float | None = None) -> Any:
        v = self._get(key, optional)
        if v is None:
            return None
        if not isinstance(v, (int, float)) or isinstance(v, bool) or not math.isfinite(v):
            raise self._fail(key, "a finite number", v)
        if minimum is not None and v < minimum:
            raise self._fail(key, f"a number >= {minimum}", v)
        return float(v)

    def boolean(self, key: str, *, optional: bool = False) -> Any:
        v = self._get(key, optional)
        if v is None:
            return None
        if not isinstance(v, bool):
            raise self._fail(key, "a boolean", v)
        return v

    def obj(self, key: str, *, optional: bool = False) -> Reader | None:
        v = self._get(key, optional)
        if v is None:
            return None
        return Reader(v, f"{self.where}.{key}")

    def raw_obj(self, key: str, *, optional: bool = False) -> dict[str, Any]:
        r = self.obj(key, optional=optional)
        return {} if r is None else dict(r.data)

    def array(self, key: str, *, optional: bool = False, max_items: int = 100_000) -> list[Any]:
        v = self._get(key, optional)
        if v is None:
            return []
        if not isinstance(v, list) or len(v) > max_items:
            raise self._fail(key, f"a list of at most {max_items} items", v)
        return v

    def items(self, key: str, *, optional: bool = False) -> list[tuple[str, Reader]]:
        """Entries of an object whose values are objects."""
        r = self.obj(key, optional=optional)
        if r is None:
            return []
        return [(k, Reader(v, f"{r.where}.{k}")) for k, v in r.data.items()]

    def schema_version(self, supported: int) -> int:
        v = self.integer("schema")
        if v != supported:
            raise SchemaError(f"{self.where}.schema: unsupported schema version {v}, expected {supported}")
        return int(v)

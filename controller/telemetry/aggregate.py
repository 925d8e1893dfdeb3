"""Pure aggregation of telemetry role summaries (no I/O).

The reference semantics are ``shared.telemetry.merge`` (ints add, lists add
element-wise, dicts merge by key, identity keys must agree).
:func:`merge_many` computes ``reduce(merge, items)`` in one pass, column-wise,
which is several times faster for the long histogram lists; a property test
checks that both agree on every input, including the errors.
"""

from __future__ import annotations

from collections.abc import Sequence
from itertools import chain
from typing import Any

from shared.telemetry import IDENTITY_KEYS, MergeError, merge

_INT = frozenset({int})

MAX_DEPTH = 8
MAX_LEAVES = 20_000  # numbers per summary; larger summaries are refused as malformed


class SummaryError(ValueError):
    """A role summary is not a mergeable telemetry summary."""


def check_summary(summary: Any, *, deep: bool = True) -> tuple[str, int]:
    """Validate one role summary's shape; return its (model, version) identity.

    ``deep=False`` checks the identity and the top level only, for summaries
    whose value types were already checked while decoding (``controller.telemetry.decode``).
    """
    if not isinstance(summary, dict):
        raise SummaryError(f"expected an object, got {type(summary).__name__}")
    model, version = summary.get("model"), summary.get("version")
    if not isinstance(model, str) or not 0 < len(model) <= 128:
        raise SummaryError(f"model: expected a model name, got {model!r:.60}")
    if not isinstance(version, int) or isinstance(version, bool) or not 1 <= version < 2**31:
        raise SummaryError(f"version: expected a positive integer, got {version!r:.60}")
    if not deep:
        for k, v in summary.items():
            if type(v) is str and k not in IDENTITY_KEYS:
                raise SummaryError(f"$.{k}: expected counts, got a string")
        return model, version
    leaves = 0

    def walk(v: Any, path: str, depth: int) -> None:
        nonlocal leaves
        if depth > MAX_DEPTH:
            raise SummaryError(f"{path}: nested deeper than {MAX_DEPTH} levels")
        t = type(v)
        if t is int:
            leaves += 1
        elif t is list:
            if set(map(type, v)) <= _INT:
                leaves += len(v)
            else:
                for i, x in enumerate(v):
                    walk(x, f"{path}[{i}]", depth + 1)
        elif t is dict:
            for k, x in v.items():
                if depth == 0 and k in IDENTITY_KEYS:
                    continue
                walk(x, f"{path}.{k}", depth + 1)
        else:
            raise SummaryError(f"{path}: expected counts (integers, lists or objects of them), got {t.__name__}")
        if leaves > MAX_LEAVES:
            raise SummaryError(f"more than {MAX_LEAVES} numbers in one summary")

    walk(summary, "$", 0)
    return model, version


def merge_many(items: Sequence[Any], path: str = "$", *, counts_checked: bool = False) -> Any:
    """``functools.reduce(shared.telemetry.merge, items)``, column-wise.

    ``counts_checked=True``: every number in ``items`` is known to be an int (not a bool), as in
    summaries read by ``shared.messages.Telemetry.read`` and the aggregates summed from them, so
    the fast path skips checking each number's type again (~a third of its time).
    """
    if not items:
        raise ValueError("merge_many needs at least one item")
    if len(items) == 1:
        return items[0]
    first = items[0]
    t = type(first)
    if t is int and all(type(x) is int for x in items):
        return sum(items)
    if t is list and all(type(x) is list for x in items):
        n = len(first)
        for x in items:
            if len(x) != n:
                break
        else:
            if set(map(type, chain.from_iterable(items))) <= _INT:
                return _sum_columns(items)
            return [merge_many(col, f"{path}[{i}]") for i, col in enumerate(zip(*items, strict=True))]
    if t is dict and len(items) >= 4:
        fast = _merge_same_layout(items, counts_checked)
        if fast is not None:
            return fast
    if t is dict and all(type(x) is dict for x in items):
        keys: dict[str, None] = {}
        for x in items:
            keys.update(dict.fromkeys(x))
        out: dict[str, Any] = {}
        for k in keys:
            vals = [x[k] for x in items if k in x]
            if k in IDENTITY_KEYS:
                for v in vals[1:]:
                    if v != vals[0]:
                        raise MergeError(f"{path}.{k}: {vals[0]!r} != {v!r}")
                out[k] = vals[0]
            else:
                out[k] = merge_many(vals, f"{path}.{k}")
        return out
    # Mixed or unsupported types: the reference implementation raises the right error.
    acc = first
    for x in items[1:]:
        acc = merge(acc, x, path)
    return acc


_END = ("",)  # closes a nested object in a layout


def _flatten(d: dict[str, Any], flat: list[Any], layout: list[tuple[Any, ...]]) -> bool:
    """Append ``d``'s counts to ``flat`` and its shape to ``layout``; False if not a plain summary."""
    for k, v in d.items():
        tv = type(v)
        if k in IDENTITY_KEYS:
            layout.append((k, "=", v))
        elif tv is list:
            layout.append((k, "[", len(v)))
            flat.extend(v)
        elif tv is int:
            layout.append((k, "1"))
            flat.append(v)
        elif tv is dict:
            layout.append((k, "{"))
            if not _flatten(v, flat, layout):
                return False
            layout.append(_END)
        else:
            return False
    return True


def _unflatten(layout: Sequence[tuple[Any, ...]], flat: list[int]) -> dict[str, Any]:
    stack: list[dict[str, Any]] = [{}]
    pos = 0
    for entry in layout:
        if entry is _END:
            stack.pop()
            continue
        k, kind = entry[0], entry[1]
        if kind == "=":
            stack[-1][k] = entry[2]
        elif kind == "[":
            stack[-1][k] = flat[pos : pos + entry[2]]
            pos += entry[2]
        elif kind == "1":
            stack[-1][k] = flat[pos]
            pos += 1
        else:
            child: dict[str, Any] = {}
            stack[-1][k] = child
            stack.append(child)
    return stack[0]


def _merge_same_layout(items: Sequence[Any], counts_checked: bool = False) -> dict[str, Any] | None:
    """Fast path: summaries with one shape (same keys in the same order, same list lengths,
    same identity) flattened to int vectors and summed at once; None when it does not apply."""
    layout0: list[tuple[Any, ...]] = []
    flats: list[list[Any]] = []
    for i, x in enumerate(items):
        if type(x) is not dict:
            return None
        flat: list[Any] = []
        layout: list[tuple[Any, ...]] = []
        if not _flatten(x, flat, layout):
            return None
        if i == 0:
            layout0 = layout
        elif layout != layout0:
            return None
        flats.append(flat)
    if not flats[0]:
        return None
    if counts_checked:
        sums = _sum_columns(flats)
        if set(map(type, sums)) <= _INT:  # a float slipped in after all: take the checked path
            return _unflatten(layout0, sums)
    if not set(map(type, chain.from_iterable(flats))) <= _INT:
        return None
    return _unflatten(layout0, _sum_columns(flats))


def _sum_columns(items: Sequence[list[int]]) -> list[int]:
    """Element-wise sum of equal-length int lists, exact (Python ints; faster here than numpy,
    whose conversion of Python ints costs more than the sums)."""
    return [sum(col) for col in zip(*items, strict=True)]


def window_start(window_start_s: float, window_s: int) -> int:
    """Align a device window's start to the aggregate's window grid (unix seconds)."""
    return int(window_start_s // window_s) * window_s

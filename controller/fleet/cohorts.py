"""Cohort membership, computed by one function (:func:`is_member`) everywhere.

A cohort has static members (device ids) and/or a dynamic filter; a device is a
member if it is listed or if it matches every criterion of the filter:
hardware class in a list, region in a list, has all the given tags, agent
version satisfies a spec such as ``>=0.2.0``. An empty criterion does not
constrain; a cohort without a filter has only its static members.
"""

from __future__ import annotations

import operator
import re
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any, Protocol

from packaging.version import InvalidVersion, Version
from sqlmodel import Session, select

from controller.core.tables import Cohort, Device

FLEET = "*"  # the pseudo-cohort of every device, used by telemetry aggregates
_SPEC = re.compile(r"^\s*(==|!=|>=|<=|>|<)\s*([0-9][0-9A-Za-z.+-]*)\s*$")
_OPS: dict[str, Callable[[Any, Any], bool]] = {
    "==": operator.eq,
    "!=": operator.ne,
    ">=": operator.ge,
    "<=": operator.le,
    ">": operator.gt,
    "<": operator.lt,
}


class DeviceLike(Protocol):
    @property
    def id(self) -> str: ...
    @property
    def hardware_class(self) -> str: ...
    @property
    def region(self) -> str: ...
    @property
    def tags(self) -> list[str]: ...
    @property
    def agent_version(self) -> str: ...


class CohortLike(Protocol):
    @property
    def name(self) -> str: ...
    @property
    def members(self) -> list[str]: ...
    @property
    def filter(self) -> dict[str, Any]: ...


@dataclass(frozen=True)
class CohortSnapshot:
    """A cohort's definition detached from the database (for caches)."""

    name: str
    members: list[str]
    filter: dict[str, Any]


@dataclass(frozen=True)
class DeviceSnapshot:
    """The device fields membership depends on, detached from the database."""

    id: str
    hardware_class: str
    region: str
    tags: list[str]
    agent_version: str


def parse_version_spec(spec: str) -> tuple[str, Version]:
    """Parse ``>=0.2.0`` and the like; ValueError naming the expected form."""
    m = _SPEC.match(spec)
    if not m:
        raise ValueError(f"invalid agent_version spec {spec!r}: expected an operator (==, !=, >=, <=, >, <) and a version")
    try:
        return m.group(1), Version(m.group(2))
    except InvalidVersion:
        raise ValueError(f"invalid version in agent_version spec {spec!r}") from None


def matches(flt: dict[str, Any], device: DeviceLike) -> bool:
    """Whether ``device`` satisfies every criterion of a dynamic filter."""
    if flt.get("hardware_class") and device.hardware_class not in flt["hardware_class"]:
        return False
    if flt.get("region") and device.region not in flt["region"]:
        return False
    if flt.get("tags") and not set(flt["tags"]).issubset(device.tags or ()):
        return False
    spec = flt.get("agent_version")
    if spec:
        op, wanted = parse_version_spec(spec)
        try:
            have = Version(device.agent_version)
        except InvalidVersion:
            return False
        if not _OPS[op](have, wanted):
            return False
    return True


def is_member(cohort: CohortLike, device: DeviceLike) -> bool:
    """The membership rule: listed, or matching a (non-empty) dynamic filter."""
    if device.id in (cohort.members or ()):
        return True
    return bool(cohort.filter) and matches(cohort.filter, device)


def member_ids(cohort: CohortLike, devices: Iterable[DeviceLike]) -> list[str]:
    return sorted(d.id for d in devices if is_member(cohort, d))


def cohorts_of(device: DeviceLike, cohorts: Iterable[CohortLike]) -> list[str]:
    return sorted(c.name for c in cohorts if is_member(c, device))


def members(session: Session, cohort: CohortLike) -> list[str]:
    """Device ids of the registered devices in ``cohort``."""
    return member_ids(cohort, session.exec(select(Device)).all())


def all_cohorts(session: Session) -> list[Cohort]:
    return list(session.exec(select(Cohort)).all())

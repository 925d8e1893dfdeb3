"""MQTT topics as validated values: built and parsed in this one place.

Layout (v1)::

    edgefleet/v1/dev/{device_id}/{kind}     kind in desired|status|telemetry|events|ack
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from enum import Enum

from shared.errors import TopicError

PREFIX = "edgefleet/v1/dev"
SHARE_GROUP = "controllers"
_DEVICE_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$")


class Kind(str, Enum):
    DESIRED = "desired"
    STATUS = "status"
    TELEMETRY = "telemetry"
    EVENTS = "events"
    ACK = "ack"  # cloud -> device: telemetry windows and events the controller has stored (``shared.messages.WindowAck``)


def validate_device_id(device_id: str) -> str:
    """Return ``device_id`` if it is usable in a topic, else raise TopicError.

    1-64 characters of ``[A-Za-z0-9._-]``, starting with a letter or digit; this
    excludes the MQTT wildcards ``+`` and ``#`` and the level separator ``/``.
    """
    if not isinstance(device_id, str) or not _DEVICE_ID.match(device_id):
        raise TopicError(
            f"Invalid device_id {device_id!r}: expected 1-64 characters of "
            "letters, digits, '.', '_' or '-', starting with a letter or digit"
        )
    return device_id


@dataclass(frozen=True)
class Topic:
    """One concrete device topic, e.g. ``edgefleet/v1/dev/pi-0001/status``."""

    device_id: str
    kind: Kind

    def __post_init__(self) -> None:
        validate_device_id(self.device_id)
        if not isinstance(self.kind, Kind):
            raise TopicError(f"Invalid topic kind {self.kind!r}")

    def __str__(self) -> str:
        return f"{PREFIX}/{self.device_id}/{self.kind.value}"

    @classmethod
    def parse(cls, topic: str) -> Topic:
        """Parse a topic string; raise TopicError naming what was wrong."""
        if not isinstance(topic, str):
            raise TopicError(f"Invalid topic: expected str, got {type(topic).__name__}")
        parts = topic.split("/")
        if len(parts) != 5 or "/".join(parts[:3]) != PREFIX:
            raise TopicError(f"Invalid topic {topic!r}: expected '{PREFIX}/<device_id>/<kind>'")
        try:
            kind = Kind(parts[4])
        except ValueError:
            kinds = ", ".join(k.value for k in Kind)
            raise TopicError(f"Invalid topic {topic!r}: unknown kind {parts[4]!r} (expected one of {kinds})") from None
        return cls(parts[3], kind)


def device_topic(device_id: str, kind: Kind) -> str:
    return str(Topic(device_id, kind))


def fleet_filter(kind: Kind, *, shared: bool = False, group: str = SHARE_GROUP) -> str:
    """Subscription filter for one kind across the fleet.

    With ``shared=True`` the filter is a shared subscription (group ``group``) so
    that several controller replicas split the load.
    """
    flt = f"{PREFIX}/+/{kind.value}"
    return f"$share/{group}/{flt}" if shared else flt

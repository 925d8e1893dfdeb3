"""Agent telemetry: mergeable window summaries, store-and-forward, data capture.

Public surface: :class:`Telemetry` (the service the daemon runs),
:class:`TelemetryApi` (local API with label feedback), :class:`WindowQueue`
(the on-disk queue) and :class:`RoleAccumulator` (one role's sums).
"""

from agent.telemetry.api import TelemetryApi
from agent.telemetry.queue import WindowQueue
from agent.telemetry.service import Telemetry
from agent.telemetry.window import RoleAccumulator, SummarySpec, WindowBuilder

__all__ = ["RoleAccumulator", "SummarySpec", "Telemetry", "TelemetryApi", "WindowBuilder", "WindowQueue"]

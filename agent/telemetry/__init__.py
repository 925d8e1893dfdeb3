"""Agent telemetry: mergeable window summaries, store-and-forward, data capture.

Public surface: :class:`Telemetry` (the service the daemon runs),
label feedback (``Telemetry.feedback``, given to the local API), :class:`WindowQueue`
(the on-disk queue) and :class:`RoleAccumulator` (one role's sums).
"""

from agent.telemetry.queue import WindowQueue
from agent.telemetry.service import Telemetry
from agent.telemetry.window import RoleAccumulator, SummarySpec, WindowBuilder

__all__ = ["RoleAccumulator", "SummarySpec", "Telemetry", "WindowBuilder", "WindowQueue"]

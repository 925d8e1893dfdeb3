"""Fleet gauges for Prometheus, read from the database at scrape time (cached briefly).

``edgefleet_devices_not_converged`` (devices not running what they should) and
``edgefleet_ota_failures_total{kind}`` (rollbacks, rejections, errors reported by
devices). Devices by version and presence (``edgefleet_devices``) come from the
monitoring job. Every replica reports the same numbers; aggregate with ``max``.
"""

from __future__ import annotations

from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from sqlalchemy import Engine, func
from sqlmodel import Session, col, select

from controller.core.metrics import CachedCollector
from controller.core.tables import Device, DeviceEvent
from controller.fleet.convergence import pending_roles

OTA_FAILURES = ("ota.rolled_back", "ota.rejected", "ota.error", "slot.invalid")


class FleetCollector(CachedCollector):
    def __init__(self, engine: Engine, ttl_s: float = 10.0) -> None:
        super().__init__(ttl_s)
        self.engine = engine

    def _read(self) -> list[Metric]:
        with Session(self.engine) as s:
            stuck = sum(bool(pending_roles(d or {}, a or {})) for d, a in s.exec(select(Device.desired, Device.actual)).all())
            q = select(DeviceEvent.kind, func.count()).where(col(DeviceEvent.kind).in_(OTA_FAILURES)).group_by(DeviceEvent.kind)
            failures = dict(s.exec(q).all())
        not_converged = GaugeMetricFamily("edgefleet_devices_not_converged", "Devices not running what they should", value=stuck)
        ota = CounterMetricFamily("edgefleet_ota_failures", "OTA failures reported by devices, by event kind", labels=["kind"])
        for kind in OTA_FAILURES:
            ota.add_metric([kind], failures.get(kind, 0))
        return [not_converged, ota]

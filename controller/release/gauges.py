"""``/metrics`` gauges of the image repository's expiries, read from the database when scraped.

``edgefleet_tuf_expires_in_seconds{role}`` for every published role and
``edgefleet_tuf_targets_renewal_needed`` (1 while offline-signed targets are within
``EDGEFLEET_TUF_TARGETS_WARN_S`` of lapsing); deploy/prometheus alerts on them.
"""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING

from prometheus_client.core import GaugeMetricFamily, Metric

from controller.core.metrics import CachedCollector

if TYPE_CHECKING:
    from controller.release.imageservice import ImageRepoService

log = logging.getLogger(__name__)


class TufExpiryCollector(CachedCollector):
    NAMES = ("edgefleet_tuf_expires_in_seconds", "edgefleet_tuf_targets_renewal_needed")  # the gauges it exports

    def __init__(self, svc: ImageRepoService, ttl_s: float = 10.0) -> None:
        super().__init__(ttl_s)
        self.svc = svc

    def _read(self) -> list[Metric]:
        exp = self.svc.expiries()
        left = GaugeMetricFamily(
            self.NAMES[0], "Seconds until each published TUF role lapses (negative: lapsed)", labels=["role"]
        )
        for role, e in exp.items():
            left.add_metric([role], e.expires_in_s)
        renew = GaugeMetricFamily(
            self.NAMES[1],
            "1 while offline-signed targets are close to lapsing: release keys must sign the pending renewal",
            value=float(self.svc.targets_warning(exp) is not None),
        )
        return [left, renew]

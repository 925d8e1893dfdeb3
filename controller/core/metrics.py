"""Prometheus metrics for operators' dashboards (prometheus-client).

Each app gets its own ``CollectorRegistry`` (nothing global), served at
``/metrics``. Counter names follow Prometheus conventions; the ingest counters
are the ones to alert on (``edgefleet_ingest_messages_total{outcome="malformed"}``).
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Iterator

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, PlatformCollector, ProcessCollector
from prometheus_client.core import CounterMetricFamily, Metric
from prometheus_client.registry import Collector

OUTCOMES = ("accepted", "duplicate", "malformed", "unknown_device", "failed")
log = logging.getLogger(__name__)


class CachedCollector(Collector):
    """Gauges read from the database when scraped, cached for ``ttl_s``; subclasses implement ``_read``.

    When the read fails (the database is away), ``/metrics`` still answers, without these gauges."""

    def __init__(self, ttl_s: float = 10.0) -> None:
        self.ttl_s = ttl_s
        self._lock = threading.Lock()
        self._at = -1e18
        self._cached: list[Metric] = []

    def describe(self) -> list[Metric]:
        return []  # nothing to check at registration; the database is read only when scraped

    def collect(self) -> Iterator[Metric]:
        with self._lock:
            if time.monotonic() - self._at > self.ttl_s:
                try:
                    self._cached = self._read()
                except Exception:
                    log.warning("%s gauges not read", type(self).__name__, exc_info=True)
                    self._cached = []
                self._at = time.monotonic()
            yield from self._cached

    def _read(self) -> list[Metric]:
        raise NotImplementedError


class Metrics:
    def __init__(self) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        r = self.registry
        self.messages = Counter(
            "edgefleet_ingest_messages",
            "Device messages taken from the broker, by topic kind and outcome",
            ["kind", "outcome"],
            registry=r,
        )
        self.flush_seconds = Histogram(
            "edgefleet_ingest_flush_seconds",
            "Time to write one batch of telemetry windows to the database",
            buckets=(0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5),
            registry=r,
        )
        self.batch_size = Histogram(
            "edgefleet_ingest_batch_windows",
            "Telemetry windows per database batch",
            buckets=(1, 10, 50, 100, 250, 500, 1000, 2500, 5000),
            registry=r,
        )
        self.queue_depth = Gauge("edgefleet_ingest_queue_depth", "Telemetry windows waiting for the next batch", registry=r)
        self.mqtt_connected = Gauge("edgefleet_mqtt_connected", "1 when the controller is connected to the broker", registry=r)
        self.receive_running = Gauge(
            "edgefleet_mqtt_receive_running",
            "1 while the MQTT receive loop runs; 0 when it died or one callback is stuck (see /healthz)",
            registry=r,
        )
        self.callback_errors = Counter(
            "edgefleet_mqtt_callback_errors",
            "Exceptions caught in MQTT callbacks (the loop went on), by callback",
            ["callback"],
            registry=r,
        )
        self.leader = Gauge("edgefleet_leader", "1 while this replica holds the leader lease", registry=r)
        self.leader_term = Gauge("edgefleet_leader_term", "Leadership term this replica last saw", registry=r)
        self.http_requests = Counter(
            "edgefleet_http_requests", "HTTP requests by method, route and status", ["method", "route", "status"], registry=r
        )
        # Monitoring (set by the leader's monitor job, so only the leading replica exports them).
        self.drift_share = Gauge(
            "edgefleet_drift_share_ratio",
            "Share of input features drifted in the latest drift check",
            ["model", "version", "cohort"],
            registry=r,
        )
        self.drift_detected = Gauge(
            "edgefleet_drift_detected", "1 while dataset drift is detected", ["model", "version", "cohort"], registry=r
        )
        self.drift_psi = Gauge(
            "edgefleet_drift_psi",
            "Population stability index per input feature",
            ["model", "version", "cohort", "feature"],
            registry=r,
        )
        self.prediction_psi = Gauge(
            "edgefleet_prediction_drift_psi",
            "Population stability index of the predictions",
            ["model", "version", "cohort"],
            registry=r,
        )
        self.accuracy = Gauge(
            "edgefleet_model_accuracy_ratio",
            "Accuracy over the SLO's short window: measured from labels or estimated from confidence",
            ["model", "cohort", "source"],
            registry=r,
        )
        self.slo_burn = Gauge(
            "edgefleet_slo_burn_rate",
            "Error-budget burn rate of an SLO over a window",
            ["slo", "model", "cohort", "window"],
            registry=r,
        )
        self.slo_target = Gauge(
            "edgefleet_slo_target_ratio", "Objective of an SLO", ["slo", "model", "cohort", "kind"], registry=r
        )
        self.alerts_firing = Gauge(
            "edgefleet_monitor_alerts_firing", "Monitoring alerts firing now", ["kind", "severity"], registry=r
        )
        self.alert_transitions = Counter(
            "edgefleet_monitor_alert_transitions", "Monitoring alerts opened or resolved", ["kind", "state"], registry=r
        )
        self.webhook_failures = Counter("edgefleet_monitor_webhook_failures", "Alert webhook deliveries that failed", registry=r)
        self.devices = Gauge(
            "edgefleet_devices",
            "Registered devices by the model version they report running in production, and presence",
            ["model", "version", "online"],
            registry=r,
        )
        self.compacted_files = Counter(
            "edgefleet_pipeline_compacted_files",
            "Sample Parquet files the compaction merged (in) and wrote (out)",
            ["direction"],
            registry=r,
        )
        self.compacted_rows = Counter("edgefleet_pipeline_compacted_rows", "Sample rows the compaction rewrote", registry=r)
        for direction in ("in", "out"):
            self.compacted_files.labels(direction)
        self.monitor_last_run = Gauge(
            "edgefleet_monitor_last_run_timestamp_seconds", "When the monitor job last finished (unix seconds)", registry=r
        )
        for kind in ("drift", "slo", "quality"):
            for sev in ("page", "ticket"):
                self.alerts_firing.labels(kind, sev)
            for state in ("firing", "resolved"):
                self.alert_transitions.labels(kind, state)
        self.http_seconds = Histogram(
            "edgefleet_http_request_duration_seconds",
            "HTTP request latency by method and route (the route template, not the raw path)",
            ["method", "route"],
            buckets=(0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10),
            registry=r,
        )
        ProcessCollector(registry=r)  # process_cpu_seconds_total, process_resident_memory_bytes, open fds, ...
        PlatformCollector(registry=r)  # python_info
        for kind in ("status", "events", "telemetry"):
            for outcome in OUTCOMES:
                self.messages.labels(kind, outcome)

    def watch_received(self, replica: str, received: Callable[[], int]) -> None:
        """``edgefleet_mqtt_received_messages_total{replica}``: messages this replica took from the
        shared subscription, read at scrape time; a member whose rate stays at zero is silent."""
        self.registry.register(_Received(replica, received))

    def watch_acks(self, windows: Callable[[], dict[str, int]], pubacks_dropped: Callable[[], int]) -> None:
        """``edgefleet_telemetry_acks_total{outcome}``: telemetry windows by what became of their ack to the device
        (``sent``; ``deferred``: waited for a broker connection; ``dropped``: given up, the device sends the window
        again), and ``edgefleet_mqtt_pubacks_dropped_total``: PUBACKs not sent because their connection was gone.
        Read at scrape time (docs/adr/0072)."""
        self.registry.register(_Acks(windows, pubacks_dropped))

    def count(self, kind: str, outcome: str, n: int = 1) -> None:
        self.messages.labels(kind, outcome).inc(n)

    def value(self, kind: str, outcome: str) -> float:
        """Current counter value (for tests and the benchmark)."""
        v = self.registry.get_sample_value("edgefleet_ingest_messages_total", {"kind": kind, "outcome": outcome})
        return float(v or 0.0)


class _Received(Collector):
    def __init__(self, replica: str, received: Callable[[], int]) -> None:
        self.replica = replica
        self.received = received

    def collect(self) -> Iterator[Metric]:
        m = CounterMetricFamily(
            "edgefleet_mqtt_received_messages", "Device messages this replica received from the broker", labels=["replica"]
        )
        m.add_metric([self.replica], float(self.received()))
        yield m


class _Acks(Collector):
    def __init__(self, windows: Callable[[], dict[str, int]], pubacks_dropped: Callable[[], int]) -> None:
        self.windows = windows
        self.pubacks_dropped = pubacks_dropped

    def collect(self) -> Iterator[Metric]:
        m = CounterMetricFamily(
            "edgefleet_telemetry_acks", "Telemetry windows by what became of their ack to the device", labels=["outcome"]
        )
        for outcome, n in sorted(self.windows().items()):
            m.add_metric([outcome], float(n))
        yield m
        yield CounterMetricFamily(
            "edgefleet_mqtt_pubacks_dropped",
            "Broker PUBACKs not sent because the connection their message came in on was gone",
            value=float(self.pubacks_dropped()),
        )

"""hpcmigd's Prometheus metrics: what moved, how long jobs paused, which agents answer.

Design note: one `Metrics` object per controller, on its own `CollectorRegistry` (so unit
tests and several services in one process do not collide), served over HTTP by
`prometheus_client.start_http_server` when hpcmigd runs. Names follow the Prometheus
conventions (`hpcmig_<thing>_<unit>`, `_total` counters, `_seconds` histograms); labels are
few and bounded (result, node), never a job id. The service reports events here; nothing
here decides or talks to the cluster.
"""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, start_http_server

# A live move pauses its container for 0.1 s to tens of seconds (memory-bound).
PAUSE_BUCKETS = (0.1, 0.25, 0.5, 1.0, 2.0, 4.0, 8.0, 16.0, 32.0, 64.0)


class Metrics:
    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        self.migrations = Counter(
            "hpcmig_migrations_total", "Live migrations of one container, by how they ended",
            ["result"], registry=self.registry)
        self.pause = Histogram(
            "hpcmig_migration_pause_seconds", "Time a moved container was stopped",
            buckets=PAUSE_BUCKETS, registry=self.registry)
        self.evacuations = Counter(
            "hpcmig_evacuations_total", "Containers and jobs taken off drained nodes, by how",
            ["how", "result"], registry=self.registry)
        self.checkpoints = Counter(
            "hpcmig_checkpoints_total", "Whole-job checkpoints, by how they ended", ["result"],
            registry=self.registry)
        self.heartbeat = Gauge(
            "hpcmig_agent_last_seen_timestamp_seconds",
            "When the node's hpcmig-agent last answered hpcmigd (Unix time)", ["node"],
            registry=self.registry)
        self.agent_up = Gauge(
            "hpcmig_agent_up", "1 if the node's hpcmig-agent answered the last ping", ["node"],
            registry=self.registry)
        self.findings = Counter(
            "hpcmig_health_findings_total", "Health rule findings on node samples, by rule",
            ["rule"], registry=self.registry)
        self.open_operations = Gauge(
            "hpcmig_operations_open", "Journaled operations not yet finished or rolled back",
            registry=self.registry)

    def migration(self, result: str, pause: float | None) -> None:
        self.migrations.labels(result=result).inc()
        if result == "done" and pause is not None:
            self.pause.observe(pause)

    def serve(self, port: int, address: str) -> None:
        """Serve /metrics on address:port from a daemon thread."""
        start_http_server(port, addr=address, registry=self.registry)

"""Prometheus metrics with a bounded label set: decisions, reason codes and secret names
(all fixed by the code and the config), never host names, paths or client addresses."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest


class Metrics:
    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        r = self.registry
        self.requests = Counter("egress_requests", "Decided requests and refused tunnels",
                                ["decision", "reason"], registry=r)  # fmt: skip
        self.injected = Counter("egress_secrets_injected", "Requests a secret was injected into", ["secret"],
                                registry=r)  # fmt: skip
        self.scrubbed = Counter(
            "egress_scrubbed_values", "Secret values replaced in responses", registry=r
        )
        self.upstream_seconds = Histogram(
            "egress_upstream_seconds", "Duration of allowed requests, request start to response end",
            buckets=(0.01, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60), registry=r,
        )  # fmt: skip
        self.open_connections = Gauge(
            "egress_open_connections", "Client connections open now", registry=r
        )
        self.vault_calls = Gauge("egress_vault_calls", "Vault calls since start", registry=r)
        self.vault_errors = Gauge(
            "egress_vault_errors", "Failed Vault refreshes since start", registry=r
        )
        self.ready = Gauge("egress_ready", "1 when the CA is made, secrets are loaded and listeners are up",
                           registry=r)  # fmt: skip

    def record(self, decision: str, reason: str, secrets: list[str], scrubbed: int,
               seconds: float | None) -> None:  # fmt: skip
        self.requests.labels(decision, reason).inc()
        for name in secrets:
            self.injected.labels(name).inc()
        if scrubbed:
            self.scrubbed.inc(scrubbed)
        if decision == "allow" and seconds is not None:
            self.upstream_seconds.observe(seconds)

    def render(self) -> bytes:
        return generate_latest(self.registry)

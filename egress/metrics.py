"""Prometheus metrics with a bounded label set: decisions, reason codes and secret names
(all fixed by the code and the config), never host names, paths or client addresses."""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from typing import Any

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from prometheus_client.metrics_core import Metric

# Families the parent of the workers keeps itself (egress.workers); every other family is
# counted by the workers and summed at each scrape.
PARENT_ONLY = frozenset(
    {"egress_ready", "egress_vault_calls", "egress_vault_errors", "egress_worker_restarts",
     "egress_workers_ready", "egress_reloads", "egress_config_generation",
     "egress_quarantined_agents"}
)  # fmt: skip


class Metrics:
    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        r = self.registry
        self.requests = Counter("egress_requests", "Decided requests and refused tunnels",
                                ["decision", "reason"], registry=r)  # fmt: skip
        # Per agent (docs/agents.md): the label takes configured agent names only, and
        # "unidentified" for a request no agent proved: bounded by the config.
        self.agent_requests = Counter("egress_agent_requests", "Decided requests by agent",
                                      ["agent", "decision"], registry=r)  # fmt: skip
        self.injected = Counter("egress_secrets_injected", "Requests a secret was injected into", ["secret"],
                                registry=r)  # fmt: skip
        # Outbound data-loss findings (docs/dlp.md): detector names come from the catalogue
        # and actions from three words, so the labels are bounded.
        self.dlp_findings = Counter("egress_dlp_findings", "Data-loss findings by detector and action",
                                    ["detector", "action"], registry=r)  # fmt: skip
        # Tripwires (docs/tripwires.md): triggers are four words; quarantined agents are
        # the parent's book (with workers).
        self.tripwires = Counter("egress_tripwires", "Tripwires fired by trigger", ["trigger"],
                                 registry=r)  # fmt: skip
        self.quarantined = Gauge("egress_quarantined_agents", "Agents quarantined now", registry=r)
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
        self.workers_ready = Gauge(
            "egress_workers_ready", "Worker processes serving now (workers:)", registry=r
        )
        self.worker_restarts = Counter(
            "egress_worker_restarts", "Workers replaced after dying unexpectedly", registry=r
        )
        self.audit_sink_errors = Counter(
            "egress_audit_sink_errors", "Audit records a sink (syslog, otlp) could not send",
            ["sink"], registry=r,
        )  # fmt: skip
        # Live reload (docs/reload.md): trigger is sighup, file or api; outcome applied,
        # unchanged or rejected.
        self.reloads = Counter("egress_reloads", "Config reloads by trigger and outcome",
                               ["trigger", "outcome"], registry=r)  # fmt: skip
        self.config_generation = Gauge(
            "egress_config_generation", "Reloads applied since start (0: the config egress started with)",
            registry=r,
        )  # fmt: skip

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

    def samples(self) -> list[list[Any]]:
        """This process's families, except the parent's own, as plain data for the
        parent of the workers: [name, help, type, [[sample, labels, value], ...]]."""
        return [
            [m.name, m.documentation, m.type, [[x.name, x.labels, x.value] for x in m.samples]]
            for m in self.registry.collect()
            if m.name not in PARENT_ONLY
        ]

    def total_requests(self) -> float:
        return sum(
            x.value
            for m in self.registry.collect()
            if m.name == "egress_requests"
            for x in m.samples
            if x.name.endswith("_total")
        )

    def render_merged(self, workers: list[list[Any]], per_worker: dict[int, float]) -> bytes:
        """The parent's own families, the workers' summed (``merge``) and how many requests
        each worker slot decided (egress_worker_requests{worker="i"})."""
        own = [m for m in self.registry.collect() if m.name in PARENT_ONLY]
        spread = Metric("egress_worker_requests", "Requests decided by each worker", "gauge")
        for slot, n in sorted(per_worker.items()):
            spread.add_sample("egress_worker_requests", {"worker": str(slot)}, n)
        families = [*own, *(_metric(f) for f in workers), spread]
        registry = CollectorRegistry(auto_describe=False)
        registry.register(_Fixed(families))
        return generate_latest(registry)


def merge(per_worker: Iterable[list[list[Any]]]) -> list[list[Any]]:
    """Sum the workers' samples by name and labels (counters, histogram buckets, sums and
    counts, open connections); a ``_created`` time is the earliest."""
    order: dict[str, list[Any]] = {}
    values: dict[str, dict[tuple[str, tuple[tuple[str, str], ...]], float]] = {}
    for families in per_worker:
        for name, doc, typ, samples in families:
            order.setdefault(name, [name, doc, typ])
            got = values.setdefault(name, {})
            for sname, labels, value in samples:
                key = (sname, tuple(sorted(labels.items())))
                if key not in got:
                    got[key] = value
                elif sname.endswith("_created"):
                    got[key] = min(got[key], value)
                else:
                    got[key] += value
    return [
        [*order[name], [[s, dict(labels), v] for (s, labels), v in values[name].items()]]
        for name in order
    ]


def _metric(family: list[Any]) -> Metric:
    name, doc, typ, samples = family
    m = Metric(name, doc, typ)
    for sname, labels, value in samples:
        m.add_sample(sname, labels, value)
    return m


class _Fixed:
    def __init__(self, families: list[Metric]):
        self.families = families

    def collect(self) -> Iterator[Metric]:
        return iter(self.families)

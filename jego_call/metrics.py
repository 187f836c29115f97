"""Prometheus metrics of `jego serve`: one registry per app, the library's process collectors, and
the signalling server's own series. Nothing here decides anything; it counts what the shells
report and reads live state at scrape time.

    metrics = ServerMetrics()                   # setup_health(app) makes one: app[METRICS]
    metrics.watch_hub(hub); metrics.watch_doors(doors); metrics.watch_messaging(svc)
    metrics.call_ended(call, duration_s, mos)   # from the hub's on_call_ended hook
    body, ctype = exposition(metrics.registry)  # GET /metrics (jego_call/signalling/health.py)

Naming follows Prometheus practice: `_total` counters, base units (`_seconds`), low-cardinality
labels only (call kind, end reason, role, message kind, a gateway's configured name), never a
user name or a number. `ServerMetrics(enabled=False)` is the switch for measurements: every hook
is then a no-op and there is no registry. Other processes have their own module on the same
helpers: bridge/gateway/metrics.py (each `jego bridge` worker), bridge/carrier/metrics.py. No
multiprocess mode: every process exposes its own /metrics.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Iterable, Iterator
from typing import TYPE_CHECKING, Any

from prometheus_client import (
    CONTENT_TYPE_LATEST,
    CollectorRegistry,
    Counter,
    Histogram,
    disable_created_metrics,
    generate_latest,
)
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.gc_collector import GCCollector
from prometheus_client.platform_collector import PlatformCollector
from prometheus_client.process_collector import ProcessCollector
from prometheus_client.registry import Collector

# No `_created` series: optional in the text format, and they double every scrape's size and CPU
# (docs/benchmarks.md "## Metrics"). Process-wide, like the library's own switch.
disable_created_metrics()  # type: ignore[no-untyped-call]  # untyped in prometheus-client

if TYPE_CHECKING:
    from .accounts import LoginDoors
    from .messaging.service import Messaging
    from .signalling.hub import Hub
    from .signalling.hub_core import Call

# MOS 1..4.5: finer where calls live (G.107 Annex B: 4.03 at R = 80 "satisfied", 3.6 at R = 70)
MOS_BUCKETS = (1.0, 1.5, 2.0, 2.5, 3.0, 3.3, 3.6, 3.8, 4.0, 4.1, 4.2, 4.3, 4.4, 4.5)
SETUP_BUCKETS = (0.1, 0.25, 0.5, 1.0, 2.0, 3.0, 5.0, 8.0, 13.0, 20.0, 30.0, 45.0, 60.0)
DURATION_BUCKETS = (1.0, 5.0, 15.0, 30.0, 60.0, 120.0, 300.0, 600.0, 1800.0, 3600.0, 7200.0, 14400.0)
KINDS = {"user": "app", "phone_out": "phone_out", "phone_in": "phone_in"}  # hub_core Call.kind -> label


def call_kind(kind: str) -> str:
    """The metrics label of a hub call's kind: app, phone_out or phone_in."""
    return KINDS.get(kind, "app")


def new_registry() -> CollectorRegistry:
    """A registry with the library's default collectors: process (CPU, memory, file
    descriptors), platform (Python version) and garbage collector."""
    reg = CollectorRegistry(auto_describe=True)
    ProcessCollector(registry=reg)   # the library's defaults live in its global REGISTRY; ours are per app
    PlatformCollector(registry=reg)
    GCCollector(registry=reg)
    return reg


def exposition(registry: CollectorRegistry) -> tuple[bytes, str]:
    """The Prometheus text format of `registry` and its Content-Type."""
    return generate_latest(registry), CONTENT_TYPE_LATEST


class Live(Collector):
    """A collector whose metrics are made at scrape time by `fn` (reading live state)."""

    def __init__(self, fn: Callable[[], Iterable[Metric]]) -> None:
        self.fn = fn

    def collect(self) -> Iterator[Metric]:
        yield from self.fn()

    def describe(self) -> Iterable[Metric]:
        return []  # made at scrape time: nothing to check at registration


def gauge(name: str, doc: str, labels: list[str] | None = None,
          values: Iterable[tuple[list[str], float]] = ()) -> GaugeMetricFamily:
    g = GaugeMetricFamily(name, doc, labels=labels or [])
    for label_values, v in values:
        g.add_metric(label_values, v)
    return g


def counter(name: str, doc: str, labels: list[str] | None = None,
            values: Iterable[tuple[list[str], float]] = ()) -> CounterMetricFamily:
    c = CounterMetricFamily(name, doc, labels=labels or [])
    for label_values, v in values:
        c.add_metric(label_values, v)
    return c


class ServerMetrics:
    """The signalling server's series (see the module doc). `enabled=False`: no-op hooks."""

    def __init__(self, enabled: bool = True) -> None:
        self.enabled = enabled
        self.registry = new_registry() if enabled else CollectorRegistry(auto_describe=False)
        self.refreshers: list[Callable[[], Awaitable[None]]] = []  # awaited before each scrape
        reg = self.registry if enabled else None
        self.calls_ended = Counter("jego_calls_ended", "Calls ended, by kind and end reason (EndReason)",
                                   ["kind", "outcome"], registry=reg)
        self.setup = Histogram("jego_call_setup_seconds", "Invite to answer of answered calls", ["kind"],
                               buckets=SETUP_BUCKETS, registry=reg)
        self.duration = Histogram("jego_call_duration_seconds", "Answer to end of answered calls", ["kind"],
                                  buckets=DURATION_BUCKETS, registry=reg)
        self.mos = Histogram("jego_call_mos", "Call quality: E-model MOS (ITU-T G.107) per call", ["kind"],
                             buckets=MOS_BUCKETS, registry=reg)
        self.quality_reports = Counter("jego_call_quality_reports", "call_stats reports received from apps",
                                       registry=reg)
        for kind in KINDS.values():  # every series exists from the start (rate() needs a zero)
            self.setup.labels(kind)
            self.mos.labels(kind)

    # --- hooks --------------------------------------------------------------------------------
    def call_ended(self, call: Call, duration_s: float | None, mos: float | None) -> None:
        """One ended hub call: its end reason, set-up time and length if answered, its MOS."""
        if not self.enabled:
            return
        kind = call_kind(call.kind)
        outcome = call.end_reason.value if call.end_reason is not None else "failed"
        self.calls_ended.labels(kind, outcome).inc()
        if call.answered_at is not None:
            self.setup.labels(kind).observe(max(0.0, call.answered_at - call.created_at))
            if duration_s is not None:
                self.duration.labels(kind).observe(max(0.0, duration_s))
        if mos is not None:
            self.observe_mos(call.kind, mos)

    def observe_mos(self, kind: str, mos: float) -> None:
        if self.enabled:
            self.mos.labels(call_kind(kind)).observe(mos)

    def quality_report(self) -> None:
        if self.enabled:
            self.quality_reports.inc()

    # --- live state, read at scrape time --------------------------------------------------------
    def watch_hub(self, hub: Hub) -> None:
        """Calls in progress by kind, WebSocket sessions by role, gateways and their capacity."""
        if not self.enabled:
            return

        def collect() -> Iterator[Metric]:
            active = dict.fromkeys(KINDS.values(), 0)
            for call in list(hub.calls.values()):
                active[call_kind(call.kind)] += 1
            yield gauge("jego_calls_active", "Calls in progress (calling, ringing or connected), by kind",
                        ["kind"], (([k], float(n)) for k, n in active.items()))
            users = sum(len(s) for s in hub.sessions.values())
            yield gauge("jego_websocket_sessions", "Authenticated WebSocket sessions, by role", ["role"],
                        [(["user"], float(users)), (["gateway"], float(len(hub.gateways)))])
            yield gauge("jego_users_online", "Users with at least one session", values=[([], float(len(hub.sessions)))])
            gws = list(hub.gateways.values())
            yield gauge("jego_gateway_capacity_calls", "Calls a connected gateway takes at once", ["gateway"],
                        (([g.name], float(g.capacity)) for g in gws))
            yield gauge("jego_gateway_calls", "Calls the server has handed to a connected gateway", ["gateway"],
                        (([g.name], float(len(g.calls))) for g in gws))

        self.registry.register(Live(collect))

    def watch_doors(self, doors: LoginDoors) -> None:
        """Login failures, lockouts and refusals (429) by rule, counted by limits.LoginPolicy."""
        if not self.enabled:
            return
        policy = doors.policy

        def collect() -> Iterator[Metric]:
            n = policy.counts
            yield counter("jego_login_failures", "Logins with a wrong password (or an unknown name)",
                          values=[([], float(n["failures"]))])
            yield counter("jego_login_lockouts", "Account lockouts started by failed logins",
                          values=[([], float(n["lockouts"]))])
            yield counter("jego_login_refused", "Logins and registrations refused with 429, by rule", ["rule"],
                          (([rule], float(v)) for rule, v in sorted(policy.refused.items())))
            gate = doors.gate
            yield gauge("jego_password_hash_queue", "Logins and registrations waiting for the password hasher",
                        values=[([], float(gate.waiting))])
            yield counter("jego_password_hashes", "Passwords hashed or checked (argon2)",
                          values=[([], float(gate.stats["hashes"]))])
            yield counter("jego_password_hash_cpu_seconds", "Wall time spent hashing on one pinned CPU",
                          values=[([], float(gate.stats["hash_s"]))])

        self.registry.register(Live(collect))

    def watch_messaging(self, messaging: Messaging) -> None:
        """Messages stored (by kind) and handed to a recipient's device (live or on sync)."""
        if not self.enabled:
            return
        counts = messaging.counts

        def collect() -> Iterator[Metric]:
            yield counter("jego_messages_stored", "Messages stored (acknowledged to the sender), by kind", ["kind"],
                          (([k], float(counts[f"stored:{k}"])) for k in ("text", "photo", "voice", "file")))
            yield counter("jego_messages_delivered",
                          "Messages handed to a recipient's device: live, or on sync (again until acknowledged)",
                          ["path"], (([p], float(counts[f"delivered:{p}"])) for p in ("live", "sync")))

        self.registry.register(Live(collect))

    def register(self, collector: Any) -> None:
        """Add another component's collector (the in-process bridge worker, the carrier)."""
        if self.enabled:
            self.registry.register(collector)

"""Prometheus metrics, health and the end-of-call summary of one bridge worker.

    metrics = BridgeMetrics("bridge-2")                      # own registry (`jego bridge`), or
    metrics = BridgeMetrics("bridge-1", registry=app_reg)    # jego serve's (the in-process worker)
    worker = BridgeWorker(..., metrics=metrics)              # the worker calls the hooks below
    server = MetricsServer(metrics, worker, host, port)      # /metrics, /healthz, /readyz
    await server.start()                                     # server.url: where it listens

Set-up time is the server's histogram (jego_call_setup_seconds by kind): a second one here would
double the cost of a scrape (histograms are most of a page) for the same figure.

Hooks (called by worker.py and call.py; none in the pure call core): `call_started(call_id)`,
`call_closed(...)` with the call's final counters, and `refresh(calls)` before every scrape, which
adds what each live call counted since the last refresh, at most every REFRESH_MIN_S (so the RTP
counters move during long calls, cost nothing between scrapes, and a 1 s scrape interval does
not read every call's stats every second). Capacity, calls in use, refusals, trunk registration
and the server connection are read from the worker at scrape time. `enabled=False` turns every
hook into a no-op (the benchmark's "without"). Series carry a `worker` label (the configured
name); legs are `app` (WebRTC) and `phone` (SIP/RTP), directions `sent`/`received`.
"""

from __future__ import annotations

import contextlib
import inspect
import logging
import time
from collections.abc import Awaitable, Callable, Iterable, Iterator, Mapping
from typing import TYPE_CHECKING, Any

from aiohttp import web
from prometheus_client import CollectorRegistry, Counter, Histogram
from prometheus_client.core import Metric

from jego_call.call.reasons import EndReason
from jego_call.log import call_summary
from jego_call.metrics import MOS_BUCKETS, Live, counter, exposition, gauge, new_registry
from jego_call.quality import Quality, bridged, rtp_receive, rtp_send, webrtc_receive, webrtc_send, worst
from jego_call.signalling.health import readiness_response, run_checks

if TYPE_CHECKING:
    from .call import BridgeCall
    from .worker import BridgeWorker

log = logging.getLogger("jego.bridge")

Key = tuple[str, str, str]  # (series, leg, direction)
REFRESH_MIN_S = 5.0         # live calls' RTP counters are read at most this often (however often scraped)
# what leg_counters() gives: (series, leg, direction)
SERIES_KEYS: tuple[Key, ...] = (
    ("packets", "app", "sent"), ("packets", "app", "received"), ("lost", "app", "received"),
    ("lost", "app", "sent"), ("late", "app", "sent"), ("packets", "phone", "sent"),
    ("packets", "phone", "received"), ("lost", "phone", "sent"), ("late", "phone", "sent"),
    ("lost", "phone", "received"), ("late", "phone", "received"), ("concealed", "phone", "received"))


def _int(v: Any) -> int | None:
    return int(v) if isinstance(v, int | float) and not isinstance(v, bool) else None


def leg_counters(app: Mapping[str, Any], phone: Mapping[str, Any], late_app_frames: int | None = None) -> dict[Key, int]:
    """A call's cumulative RTP counters from its app leg's `stats()` (MediaEndpoint: packets
    sent/received/lost, `remote_packets_lost` from the app's RTCP) and its SIP leg's `stats()`
    (`_MediaClient`: tx/rx packets, the jitter buffer's lost/late/concealed, `remote_loss` from
    the carrier's RTCP, `tx_skipped_ticks`); `late_app_frames`: frames we sent the app late."""
    out: dict[Key, int] = {}

    def put(key: Key, v: Any) -> None:
        n = _int(v)
        if n is not None:
            out[key] = max(0, n)

    put(("packets", "app", "sent"), app.get("packets_sent"))
    put(("packets", "app", "received"), app.get("packets_received"))
    put(("lost", "app", "received"), app.get("packets_lost"))
    put(("lost", "app", "sent"), app.get("remote_packets_lost"))
    put(("late", "app", "sent"), late_app_frames)
    put(("packets", "phone", "sent"), phone.get("tx_packets"))
    put(("packets", "phone", "received"), phone.get("rx_packets"))
    put(("lost", "phone", "sent"), phone.get("remote_loss"))
    put(("late", "phone", "sent"), phone.get("tx_skipped_ticks"))
    js = phone.get("jitter")
    if js is not None:
        get = js.get if isinstance(js, Mapping) else (lambda k, d=None: getattr(js, k, d))
        put(("lost", "phone", "received"), get("lost"))
        put(("late", "phone", "received"), get("late"))
        put(("concealed", "phone", "received"), get("concealed"))
    return out


def call_quality(app: Mapping[str, Any], phone: Mapping[str, Any], app_codec: str | None,
                 phone_codec: str | None) -> Quality | None:
    """The E-model score of a bridged call: the worse of its two directions (jego_call/quality.py
    `bridged`); None when neither leg measured anything."""
    pc = (phone_codec or "pcmu").lower()
    ac = (app_codec or "opus").lower()
    have_app = bool(_int(app.get("packets_received")) or _int(app.get("packets_sent")))
    have_phone = bool(phone)
    both = bridged(webrtc_receive(app, ac) if have_app else None, webrtc_send(app, ac) if have_app else None,
                   rtp_receive(phone, pc) if have_phone else None, rtp_send(phone, pc) if have_phone else None)
    return worst(*both.values())


async def app_leg_stats(call: BridgeCall) -> dict[str, Any]:
    """The app leg's counters through its `stats()` (sync or async: MediaEndpoint's is async)."""
    ep = getattr(call, "ep", None)
    fn = getattr(ep, "stats", None)
    if not callable(fn):
        return {}
    got = fn()
    if inspect.isawaitable(got):
        got = await got
    return dict(got) if isinstance(got, Mapping) else {}


def late_frames(call: BridgeCall) -> int | None:
    """Frames the bridge handed the app leg more than 10 ms after their 20 ms slot."""
    pacing = getattr(getattr(call, "track", None), "pacing", None)
    if pacing is None:
        return None
    return int(pacing.frames - pacing.on_time)


class BridgeMetrics:
    """One worker's series (see the module doc)."""

    def __init__(self, worker: str, registry: CollectorRegistry | None = None, enabled: bool = True) -> None:
        self.worker = worker
        self.enabled = enabled
        self.registry = (registry if registry is not None else new_registry()) if enabled else CollectorRegistry()
        reg = self.registry if enabled else None
        w = ["worker"]
        self.ended = Counter("jego_bridge_calls_ended", "Bridged calls ended, by kind and end reason",
                             [*w, "kind", "outcome"], registry=reg)
        self.mos = Histogram("jego_bridge_call_mos", "Bridged calls' E-model MOS (the worse direction)", w,
                             buckets=MOS_BUCKETS, registry=reg)
        self.series = {
            "packets": Counter("jego_bridge_rtp_packets", "RTP packets per leg and direction",
                               [*w, "leg", "direction"], registry=reg),
            "lost": Counter("jego_bridge_rtp_lost_packets",
                            "RTP packets lost: on the way to us (received), or of ours as the far end reports "
                            "in RTCP (sent)", [*w, "leg", "direction"], registry=reg),
            "late": Counter("jego_bridge_late_frames",
                            "Frames late: arrived after their playout slot (phone received), sent more than 10 ms "
                            "after their slot (app sent), send slots skipped after a stall (phone sent)",
                            [*w, "leg", "direction"], registry=reg),
            "concealed": Counter("jego_bridge_concealed_frames", "20 ms frames played as silence for a gap",
                                 [*w, "leg", "direction"], registry=reg),
        }
        self._live: dict[str, dict[Key, int]] = {}  # call id -> its counters as last counted
        self.refreshes = 0
        self._refreshed_at: float | None = None
        self.cpu_s = 0.0   # thread CPU spent in these hooks and in rendering /metrics (the benchmark's figure)
        if enabled:  # every series exists from the start, at 0 (rate() and absent() need it)
            self.mos.labels(worker)
            for series, leg, direction in SERIES_KEYS:
                self.series[series].labels(worker, leg, direction)

    # --- hooks ------------------------------------------------------------------------------------
    def call_started(self, call_id: str) -> None:
        if self.enabled:
            self._live[call_id] = {}

    def _count(self, call_id: str, now: Mapping[Key, int]) -> None:
        seen = self._live.get(call_id)
        if seen is None:
            return
        for key, value in now.items():
            delta = value - seen.get(key, 0)
            if delta > 0:
                series, leg, direction = key
                self.series[series].labels(self.worker, leg, direction).inc(delta)
                seen[key] = value

    async def refresh(self, calls: Iterable[BridgeCall]) -> None:
        """Count what each live call counted since the last scrape (before rendering /metrics)."""
        if not self.enabled:
            return
        now = time.monotonic()
        if self._refreshed_at is not None and now - self._refreshed_at < REFRESH_MIN_S:
            return  # scraped again within REFRESH_MIN_S: the counters of the last refresh stand
        self._refreshed_at = now
        self.refreshes += 1
        t0 = time.thread_time()
        try:
            await self._refresh(calls)
        finally:
            self.cpu_s += time.thread_time() - t0  # includes the legs' stats() (aiortc getStats)

    async def _refresh(self, calls: Iterable[BridgeCall]) -> None:
        for call in list(calls):
            if call.call_id not in self._live or call.done.is_set():
                continue
            try:
                app = await app_leg_stats(call)
                phone_fn = getattr(call.leg, "stats", None)
                phone = dict(phone_fn()) if callable(phone_fn) else {}
            except Exception:  # a call closing under us: its final counts come from call_closed
                continue
            self._count(call.call_id, leg_counters(app, phone, late_frames(call)))

    def call_closed(self, call_id: str, kind: str, outcome: str, counters: Mapping[Key, int],
                    mos: float | None) -> None:
        """A call is over: its last counts, its end reason, its score (once per started call)."""
        if not self.enabled or call_id not in self._live:
            return
        t0 = time.thread_time()
        self._count(call_id, counters)
        self._live.pop(call_id, None)
        self.ended.labels(self.worker, kind, outcome).inc()
        if mos is not None:
            self.mos.labels(self.worker).observe(mos)
        self.cpu_s += time.thread_time() - t0

    def render(self) -> tuple[bytes, str]:
        """The exposition of this worker's registry (timed into `cpu_s`)."""
        t0 = time.thread_time()
        try:
            return exposition(self.registry)
        finally:
            self.cpu_s += time.thread_time() - t0

    # --- live state -------------------------------------------------------------------------------
    def watch(self, worker: BridgeWorker) -> None:
        """Capacity, calls in use, refusals, trunk registration, server connection: read at scrape."""
        if not self.enabled:
            return
        w = [self.worker]

        def collect() -> Iterator[Metric]:
            yield gauge("jego_bridge_capacity_calls", "Calls this worker takes at once ([bridge] max_calls)",
                        ["worker"], [(w, float(worker.max_calls))])
            yield gauge("jego_bridge_calls_in_use", "Calls this worker is carrying", ["worker"],
                        [(w, float(len(worker.calls)))])
            yield counter("jego_bridge_calls_refused", "Calls refused at capacity (congestion)", ["worker"],
                          [(w, float(worker.refused))])
            registered = False
            with contextlib.suppress(Exception):
                registered = bool(worker.trunk.registered)
            yield gauge("jego_bridge_trunk_registered", "1 while the carrier trunk accepts our REGISTER "
                        "(always 1 in trunk mode once started)", ["worker"], [(w, float(registered))])
            yield gauge("jego_bridge_server_connected", "1 while authenticated to the signalling server",
                        ["worker"], [(w, float(worker.ready.is_set()))])
            yield counter("jego_bridge_server_connects", "Gateway sessions opened to the signalling server",
                          ["worker"], [(w, float(worker.connects))])
            yield counter("jego_bridge_metrics_cpu_seconds", "CPU the worker spent on its own metrics (counting "
                          "at scrapes and call ends, rendering this page)", ["worker"], [(w, self.cpu_s)])

        self.registry.register(Live(collect))


def summarise(call: BridgeCall, app: Mapping[str, Any], phone: Mapping[str, Any], codec: str | None,
              quality: Quality | None, now: float) -> tuple[str, str]:
    """Log the call's one summary line; returns (kind, outcome) for the metrics."""
    info = call.end_info
    kind = "phone_out" if call.direction == "out" else "phone_in"
    outcome = EndReason.parse(info.get("reason")).value
    connected = call.connected_at
    call_summary(log, call.call_id, kind=kind, outcome=outcome, sip_code=info.get("sip_code"),
                 q850_cause=info.get("q850_cause"),
                 duration_s=round(now - connected, 3) if connected is not None else None, codec=codec,
                 mos=round(quality.mos, 2) if quality else None,
                 r_factor=round(quality.r_factor, 1) if quality else None,
                 quality=quality.word if quality else None, hung_up_by=info.get("by"))
    return kind, outcome


async def readiness(worker: BridgeWorker) -> tuple[bool, dict[str, str]]:
    """The worker's /readyz: the carrier trunk registration and the signalling connection."""

    async def trunk() -> str | None:
        try:
            return None if worker.trunk.registered else "not registered with the carrier trunk"
        except RuntimeError as exc:  # not started
            return str(exc)

    async def server() -> str | None:
        return None if worker.ready.is_set() else f"not connected to {worker.server_url}"

    return await run_checks([("trunk", trunk), ("server", server)])


class MetricsServer:
    """`jego bridge`'s HTTP endpoint: /metrics, /healthz, /readyz on `host`:`port` (0: free)."""

    def __init__(self, metrics: BridgeMetrics, worker: BridgeWorker, host: str = "127.0.0.1", port: int = 0) -> None:
        self.metrics = metrics
        self.worker = worker
        self.host = host
        self.port = port
        self.url = ""
        self._runner: web.AppRunner | None = None

    async def start(self) -> str:
        app = web.Application()
        app.router.add_get("/metrics", self._metrics)
        app.router.add_get("/healthz", self._healthz)
        app.router.add_get("/readyz", self._readyz)
        self._runner = web.AppRunner(app, access_log=None)
        await self._runner.setup()
        await web.TCPSite(self._runner, self.host, self.port).start()
        host, port = self._runner.addresses[0][:2]
        self.port = int(port)
        self.url = f"http://{host}:{port}"
        return self.url

    async def stop(self) -> None:
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None

    async def _metrics(self, request: web.Request) -> web.Response:
        if not self.metrics.enabled:
            raise web.HTTPNotFound(text="metrics are disabled ([metrics] enabled = false)")
        await self.metrics.refresh(self.worker.calls.values())
        body, ctype = self.metrics.render()
        return web.Response(body=body, headers={"Content-Type": ctype, "Cache-Control": "no-store"})

    async def _healthz(self, request: web.Request) -> web.Response:
        return web.json_response({"status": "ok", "worker": self.worker.name})

    async def _readyz(self, request: web.Request) -> web.Response:
        ok, checks = await readiness(self.worker)
        return readiness_response(ok, checks)


Refresher = Callable[[], Awaitable[None]]
__all__ = ["BridgeMetrics", "MetricsServer", "call_quality", "leg_counters", "readiness", "summarise"]

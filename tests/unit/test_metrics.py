"""jego_call/metrics.py and bridge/gateway/metrics.py without a network: what the hooks count,
what a scrape reads, and that the exposition parses with HELP and TYPE on every metric."""

from __future__ import annotations

import asyncio
import re
from types import SimpleNamespace
from typing import Any

import pytest
from prometheus_client.parser import text_string_to_metric_families

from bridge.gateway.metrics import SERIES_KEYS, BridgeMetrics, call_quality, leg_counters, readiness
from jego_call.call.reasons import EndReason
from jego_call.metrics import ServerMetrics, exposition
from jego_call.signalling.health import run_checks
from jego_call.signalling.hub_core import Call


def samples(registry: Any) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    text = exposition(registry)[0].decode()
    out = {}
    for fam in text_string_to_metric_families(text):
        assert fam.documentation and fam.type, fam.name
        for s in fam.samples:
            out[s.name, tuple(sorted(s.labels.items()))] = s.value
    return out


def help_and_type_everywhere(text: str) -> None:
    helps = set(re.findall(r"(?m)^# HELP (\S+) ", text))
    types = set(re.findall(r"(?m)^# TYPE (\S+) ", text))
    assert helps == types and helps


def test_server_counts_ended_calls_by_kind_and_outcome() -> None:
    m = ServerMetrics()
    app = Call("c1", "alice", "bob", ("audio",), "s1", created_at=100.0, answered_at=101.5, kind="user",
               end_reason=EndReason.HANGUP)
    phone = Call("c2", "alice", "+8613800138000", ("audio",), "s1", created_at=100.0, kind="phone_out",
                 end_reason=EndReason.BUSY)
    m.call_ended(app, 30.0, 4.4)
    m.call_ended(phone, None, None)
    got = samples(m.registry)
    assert got["jego_calls_ended_total", (("kind", "app"), ("outcome", "hangup"))] == 1
    assert got["jego_calls_ended_total", (("kind", "phone_out"), ("outcome", "busy"))] == 1
    # the set-up histogram has the answered call only; MOS likewise
    assert got["jego_call_setup_seconds_count", (("kind", "app"),)] == 1
    assert got["jego_call_setup_seconds_sum", (("kind", "app"),)] == pytest.approx(1.5)
    assert got["jego_call_setup_seconds_count", (("kind", "phone_out"),)] == 0
    assert got["jego_call_mos_count", (("kind", "app"),)] == 1
    assert got["jego_call_mos_bucket", (("kind", "app"), ("le", "4.3"))] == 0
    assert got["jego_call_mos_bucket", (("kind", "app"), ("le", "4.4"))] == 1
    assert got["jego_call_duration_seconds_sum", (("kind", "app"),)] == 30.0
    # the library's process collectors are in the same registry
    assert any(name == "process_cpu_seconds_total" for name, _ in got)
    help_and_type_everywhere(exposition(m.registry)[0].decode())


def test_live_state_is_read_at_scrape_time() -> None:
    calls: dict[str, Any] = {}
    hub = SimpleNamespace(calls=calls, sessions={"alice": [1, 2], "bob": [3]},
                          gateways={"g": SimpleNamespace(name="bridge-1", capacity=16, calls={"x"})})
    m = ServerMetrics()
    m.watch_hub(hub)  # type: ignore[arg-type]
    got = samples(m.registry)
    assert got["jego_calls_active", (("kind", "app"),)] == 0
    assert got["jego_websocket_sessions", (("role", "user"),)] == 3
    assert got["jego_websocket_sessions", (("role", "gateway"),)] == 1
    assert got["jego_gateway_capacity_calls", (("gateway", "bridge-1"),)] == 16
    calls["c"] = SimpleNamespace(kind="phone_in")
    assert samples(m.registry)["jego_calls_active", (("kind", "phone_in"),)] == 1


def test_disabled_metrics_are_no_ops() -> None:
    m = ServerMetrics(enabled=False)
    m.call_ended(Call("c", "a", "b", ("audio",), "s", end_reason=EndReason.HANGUP), 1.0, 4.0)
    m.watch_hub(SimpleNamespace(calls={}, sessions={}, gateways={}))  # type: ignore[arg-type]
    assert exposition(m.registry)[0] == b""


# --- the bridge ----------------------------------------------------------------------------------
APP: dict[str, Any] = {"packets_sent": 500, "packets_received": 490, "packets_lost": 10, "remote_packets_lost": 3,
       "jitter_ms": 2.0, "rtt_ms": 4.0, "codec": "opus"}
PHONE: dict[str, Any] = {"tx_packets": 495, "rx_packets": 480, "remote_loss": 5, "tx_skipped_ticks": 1, "rtt_ms": 2.0,
         "jitter": {"expected": 500, "lost": 20, "late": 2, "concealed": 22, "jitter": 0.001}}


def test_leg_counters_name_every_leg_and_direction() -> None:
    got = leg_counters(APP, PHONE, late_app_frames=4)
    assert got == {
        ("packets", "app", "sent"): 500, ("packets", "app", "received"): 490, ("lost", "app", "received"): 10,
        ("lost", "app", "sent"): 3, ("late", "app", "sent"): 4, ("packets", "phone", "sent"): 495,
        ("packets", "phone", "received"): 480, ("lost", "phone", "sent"): 5, ("late", "phone", "sent"): 1,
        ("lost", "phone", "received"): 20, ("late", "phone", "received"): 2,
        ("concealed", "phone", "received"): 22}
    assert set(got) == set(SERIES_KEYS)
    assert leg_counters({}, {}) == {}


def test_bridged_call_quality_is_the_worse_direction() -> None:
    clean = call_quality({"packets_sent": 500, "packets_received": 500, "packets_lost": 0},
                         {"tx_packets": 500, "jitter": {"expected": 500, "lost": 0}}, "opus", "PCMU")
    assert clean is not None and clean.mos >= 4.1
    lossy = call_quality(APP, PHONE, "opus", "PCMU")
    assert lossy is not None and lossy.mos < clean.mos
    worse_phone = call_quality(APP, {**PHONE, "jitter": {**PHONE["jitter"], "lost": 80}}, "opus", "PCMU")
    assert worse_phone is not None and worse_phone.r_factor < lossy.r_factor
    assert call_quality({}, {}, None, None) is None


class FakeCall:
    def __init__(self, call_id: str, app: dict[str, Any], phone: dict[str, Any]) -> None:
        self.call_id = call_id
        self.done = asyncio.Event()
        self.ep = SimpleNamespace(stats=self._app)
        self.leg = SimpleNamespace(stats=lambda: dict(phone))
        self.track = SimpleNamespace(pacing=SimpleNamespace(frames=100, on_time=97))
        self.app = app

    async def _app(self) -> dict[str, Any]:
        return dict(self.app)


@pytest.fixture
def bridge_metrics() -> BridgeMetrics:
    return BridgeMetrics("bridge-9")


def rtp(m: BridgeMetrics, series: str, leg: str, direction: str) -> float:
    name = {"packets": "jego_bridge_rtp_packets_total", "lost": "jego_bridge_rtp_lost_packets_total",
            "late": "jego_bridge_late_frames_total", "concealed": "jego_bridge_concealed_frames_total"}[series]
    return samples(m.registry)[name, (("direction", direction), ("leg", leg), ("worker", "bridge-9"))]


async def test_scrapes_add_what_live_calls_counted_since_the_last(bridge_metrics: BridgeMetrics) -> None:
    m = bridge_metrics
    for key in SERIES_KEYS:  # every series is there at 0 before any call
        assert rtp(m, *key) == 0
    call = FakeCall("c1", {"packets_sent": 100, "packets_received": 90}, {"tx_packets": 50})
    m.call_started("c1")
    await m.refresh([call])  # type: ignore[list-item]
    assert rtp(m, "packets", "app", "received") == 90 and rtp(m, "late", "app", "sent") == 3
    call.app = {"packets_sent": 150, "packets_received": 140}
    await m.refresh([call])  # type: ignore[list-item]
    assert rtp(m, "packets", "app", "received") == 90  # scraped again at once: not read again
    m._refreshed_at = -1e9  # REFRESH_MIN_S later
    await m.refresh([call])  # type: ignore[list-item]
    assert rtp(m, "packets", "app", "received") == 140  # the delta, not the total twice
    # the end: the final counters top up; a counter that went backwards never decreases ours
    m.call_closed("c1", "phone_out", "hangup", {("packets", "app", "received"): 200,
                                                ("packets", "phone", "sent"): 10}, 4.3)
    assert rtp(m, "packets", "app", "received") == 200 and rtp(m, "packets", "phone", "sent") == 50
    m.call_closed("c1", "phone_out", "hangup", {("packets", "app", "received"): 500}, None)  # closed twice
    m.call_closed("never-started", "phone_out", "busy", {}, None)
    got = samples(m.registry)
    assert rtp(m, "packets", "app", "received") == 200
    ended = got["jego_bridge_calls_ended_total", (("kind", "phone_out"), ("outcome", "hangup"),
                                                   ("worker", "bridge-9"))]
    assert ended == 1  # a call ends once
    assert ("jego_bridge_calls_ended_total", (("kind", "phone_out"), ("outcome", "busy"),
                                              ("worker", "bridge-9"))) not in got
    assert got["jego_bridge_call_mos_count", (("worker", "bridge-9"),)] == 1
    # a call that is done is not read any more
    call.done.set()
    call.app = {"packets_received": 10_000}
    m._refreshed_at = -1e9
    await m.refresh([call])  # type: ignore[list-item]
    assert rtp(m, "packets", "app", "received") == 200


async def test_worker_state_and_readiness() -> None:
    m = BridgeMetrics("bridge-9")
    worker = SimpleNamespace(max_calls=16, calls={"a": 1, "b": 2}, refused=3, connects=1,
                             trunk=SimpleNamespace(registered=True), ready=asyncio.Event(),
                             server_url="http://127.0.0.1:1", name="bridge-9")
    m.watch(worker)  # type: ignore[arg-type]
    got = samples(m.registry)
    w = (("worker", "bridge-9"),)
    assert got["jego_bridge_capacity_calls", w] == 16 and got["jego_bridge_calls_in_use", w] == 2
    assert got["jego_bridge_calls_refused_total", w] == 3 and got["jego_bridge_server_connected", w] == 0
    help_and_type_everywhere(exposition(m.registry)[0].decode())
    ok, checks = await readiness(worker)  # type: ignore[arg-type]
    assert not ok and checks == {"trunk": "ok", "server": "not connected to http://127.0.0.1:1"}
    worker.ready.set()
    worker.trunk.registered = False
    ok, checks = await readiness(worker)  # type: ignore[arg-type]
    assert not ok and checks["trunk"] == "not registered with the carrier trunk" and checks["server"] == "ok"


async def test_readiness_checks_that_fail_or_hang_are_not_ready(monkeypatch: pytest.MonkeyPatch) -> None:
    import jego_call.signalling.health as health
    monkeypatch.setattr(health, "CHECK_TIMEOUT_S", 0.05)

    async def fine() -> str | None:
        return None

    async def broken() -> str | None:
        raise ConnectionError("refused")

    async def hangs() -> str | None:
        await asyncio.sleep(10)   # the subject: a check that never answers within the 0.05 s limit
        return None

    ok, checks = await run_checks([("database", fine), ("redis", broken), ("trunk", hangs)])
    assert not ok
    assert checks == {"database": "ok", "redis": "ConnectionError: refused", "trunk": "no answer within 0.05 s"}
    assert await run_checks([("database", fine)]) == (True, {"database": "ok"})

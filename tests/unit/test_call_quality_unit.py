"""jego_call/signalling/call_quality.py's `CallQuality` against a stand-in hub, on a clock the
test moves: `call_stats` parsed or refused with its error code, who may report (a party of a
connected call, not a gateway, not a stranger), the interval score from the difference between
two cumulative reports (and 100 % loss when nothing at all came for 1.5 s), the call's score as
the worse party, the final report after the end within its grace and not after, the bridge's
score replacing the parties' for phone calls, the MOS observed once, and the record written
through the hub's writer.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass, field
from typing import Any, cast

import pytest

from jego_call.call.reasons import EndReason
from jego_call.calllog import CallLog
from jego_call.errors import ErrorCode, SignallingError
from jego_call.metrics import ServerMetrics
from jego_call.signalling import call_quality as cq
from jego_call.signalling import messages as m
from jego_call.signalling.call_quality import CallQuality, CallStats
from jego_call.signalling.hub import Hub, Session
from jego_call.signalling.hub_core import Call, StoreReport

CID = "call-0001"


@dataclass
class FakeSession:
    id: str
    role: str = "user"
    sent: list[dict[str, Any]] = field(default_factory=list)

    def send(self, msg: dict[str, Any]) -> None:
        self.sent.append(msg)


@dataclass
class FakeHub:
    calls: dict[str, Call] = field(default_factory=dict)
    handlers: dict[type, Any] = field(default_factory=dict)
    on_call_ended: list[Any] = field(default_factory=list)
    on_call_report: list[Any] = field(default_factory=list)
    writes: list[tuple[functools.partial[Any], str, str]] = field(default_factory=list)

    def register_handler(self, kind: type, fn: Any) -> None:
        self.handlers[kind] = fn

    def queue_write(self, fn: functools.partial[Any], call_id: str, what: str) -> None:
        self.writes.append((fn, call_id, what))


class FakeCallLog:
    async def set_quality(self, call_id: str, mos: float, r_factor: float) -> bool:
        raise AssertionError("queued on the hub's writer, never run by CallQuality itself")


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


class World:
    def __init__(self) -> None:
        self.hub = FakeHub()
        self.clock = Clock()
        self.metrics = ServerMetrics()
        self.log = cast(CallLog, FakeCallLog())
        self.q = CallQuality(cast(Hub, self.hub), self.log, self.metrics, clock=self.clock, wall=lambda: 2000.0)
        self.q.register()
        self.caller, self.callee = FakeSession("s-a"), FakeSession("s-b")

    def call(self, answered: bool = True, kind: str = "user") -> Call:
        c = Call(CID, "alice", "bob", ("audio",), "s-a", created_at=1990.0, kind=kind)
        if answered:
            c.answered_session, c.answered_at = "s-b", 1995.0
        self.hub.calls[CID] = c
        return c

    def stats(self, session: FakeSession, received: int, lost: int = 0, final: bool = False,
              **extra: Any) -> dict[str, Any]:
        self.q.on_stats(cast(Session, session), CallStats(CID, extra.get("codec", "opus"), received, lost,
                                                          extra.get("jitter_ms", 5.0), extra.get("rtt_ms", 40.0),
                                                          None, final))
        return session.sent[-1]

    def end(self, call: Call, reason: EndReason = EndReason.HANGUP) -> None:
        call.end_reason = reason
        call.ended_by = "alice"
        del self.hub.calls[CID]
        for hook in self.hub.on_call_ended:
            hook(call)

    def stored(self) -> list[tuple[str, float, float]]:
        return [(w[0].args[0], w[0].args[1], w[0].args[2]) for w in self.hub.writes]

    def mos_count(self, kind: str = "app") -> float:
        v = self.metrics.registry.get_sample_value("jego_call_mos_count", {"kind": kind})
        return float(v or 0.0)


@pytest.fixture
def w() -> World:
    return World()


# --- parsing --------------------------------------------------------------------------------------
def stats_msg(**fields: Any) -> dict[str, Any]:
    return {"type": "call_stats", "call_id": CID, "packets_received": 10, "packets_lost": 0, **fields}


def test_a_report_parses_to_its_counters() -> None:
    got = m.parse_message(stats_msg(codec="OPUS", jitter_ms=3.5, rtt_ms=80, jitter_buffer_ms=40, final=True))
    assert got == CallStats(CID, "opus", 10, 0, 3.5, 80.0, 40.0, True)
    assert got.counters()["jitter_buffer_ms"] == 40.0


@pytest.mark.parametrize("fields", [
    {"final": "yes"}, {"packets_received": -1}, {"packets_received": None}, {"packets_lost": 2**31 + 1},
    {"packets_received": 1.5}, {"packets_received": True}, {"jitter_ms": -1}, {"rtt_ms": 60_001},
    {"codec": "x" * 17}, {"call_id": "short"}, {"jitter_buffer_ms": "lots"},
])
def test_a_bad_report_is_invalid_message(fields: dict[str, Any]) -> None:
    with pytest.raises(SignallingError) as e:
        m.parse_message(stats_msg(**fields))
    assert e.value.code == ErrorCode.INVALID_MESSAGE


# --- who may report ------------------------------------------------------------------------------------
def test_only_the_parties_of_a_connected_call_may_report(w: World) -> None:
    w.call()
    for session, code in ((FakeSession("gw", role="gateway"), ErrorCode.FORBIDDEN),
                          (FakeSession("s-x"), ErrorCode.NOT_PARTY)):
        with pytest.raises(SignallingError) as e:
            w.stats(session, 10)
        assert e.value.code == code and e.value.call_id == CID
    assert w.stats(w.caller, 10)["type"] == "call_quality"
    assert w.stats(w.callee, 10)["call_id"] == CID


def test_a_call_not_yet_answered_has_nothing_to_score(w: World) -> None:
    w.call(answered=False)
    with pytest.raises(SignallingError) as e:
        w.stats(w.caller, 10)
    assert e.value.code == ErrorCode.INVALID_STATE


def test_an_unknown_call_is_unknown_call(w: World) -> None:
    with pytest.raises(SignallingError) as e:
        w.stats(w.caller, 10)
    assert e.value.code == ErrorCode.UNKNOWN_CALL


# --- scores ----------------------------------------------------------------------------------------
def test_the_interval_score_comes_from_the_difference_of_two_reports(w: World) -> None:
    w.call()
    first = w.stats(w.caller, 1000, 0)
    assert first["quality"] == "good" and first["mos"] > 4.0
    w.clock.now += 5
    bad = w.stats(w.caller, 1100, 100)                 # this interval: 100 of 200 lost
    assert bad["quality"] == "poor" and bad["mos"] < 2.5
    whole = w.q.live[CID].parties["s-a"].quality
    assert whole is not None and whole.mos > bad["mos"]   # the whole call: 100 of 1200, not as bad
    w.clock.now += 5
    back = w.stats(w.caller, 1350, 100)                # good again: the word is live
    assert back["quality"] == "good"


def test_nothing_at_all_for_long_enough_is_total_loss(w: World) -> None:
    w.call()
    w.stats(w.caller, 500)
    w.clock.now += cq.NO_AUDIO_AFTER_S - 0.1
    assert w.stats(w.caller, 500)["quality"] == "good"  # too short to judge: no packets expected
    w.clock.now += 2.0
    silent = w.stats(w.caller, 500)
    assert silent["quality"] == "poor" and silent["mos"] < 1.5


def test_the_calls_score_is_the_worse_party_and_is_stored_at_the_end(w: World) -> None:
    call = w.call()
    w.stats(w.caller, 1000, 0)
    w.stats(w.callee, 900, 100)
    w.end(call)
    stored = w.stored()
    assert len(stored) == 1 and stored[0][0] == CID
    callee_q = w.q.recent[CID].parties["s-b"].quality
    caller_q = w.q.recent[CID].parties["s-a"].quality
    assert callee_q is not None and caller_q is not None and callee_q.mos < caller_q.mos
    assert stored[0][1:] == (callee_q.mos, callee_q.r_factor)
    assert w.hub.writes[0][0].func == w.log.set_quality
    assert w.mos_count() == 1.0
    assert w.metrics.registry.get_sample_value("jego_calls_ended_total",
                                               {"kind": "app", "outcome": "hangup"}) == 1.0
    assert w.metrics.registry.get_sample_value("jego_call_quality_reports_total") == 2.0


def test_a_call_nobody_reported_on_stores_no_score(w: World) -> None:
    w.end(w.call())
    assert w.stored() == [] and w.mos_count() == 0.0


def test_a_final_report_within_the_grace_is_taken_and_stored(w: World) -> None:
    call = w.call()
    w.stats(w.caller, 1000)
    w.end(call)
    w.clock.now += cq.FINAL_GRACE_S
    msg = w.stats(w.callee, 800, 200, final=True)
    assert msg["type"] == "call_quality"
    assert len(w.stored()) == 2 and w.stored()[-1][1] < w.stored()[0][1]   # the worse party, now known
    assert w.mos_count() == 1.0                                               # observed once only


def test_a_final_report_after_the_grace_is_unknown_call(w: World) -> None:
    call = w.call()
    w.end(call)
    w.clock.now += cq.FINAL_GRACE_S + 0.01
    with pytest.raises(SignallingError) as e:
        w.stats(w.caller, 10, final=True)
    assert e.value.code == ErrorCode.UNKNOWN_CALL


def test_a_stranger_cannot_report_on_an_ended_call(w: World) -> None:
    w.end(w.call())
    with pytest.raises(SignallingError) as e:
        w.stats(FakeSession("s-x"), 10, final=True)
    assert e.value.code == ErrorCode.NOT_PARTY


def test_only_so_many_ended_calls_are_remembered(w: World, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(cq, "RECENT", 2)
    for i in range(3):
        c = Call(f"call-{i:04d}", "alice", "bob", ("audio",), "s-a", answered_session="s-b", answered_at=1.0)
        w.q.on_call_ended(c)
    assert list(w.q.recent) == ["call-0001", "call-0002"]


# --- the bridge's score --------------------------------------------------------------------------
def test_the_bridges_score_replaces_the_parties_for_a_phone_call(w: World) -> None:
    call = w.call(kind="phone_out")
    w.stats(w.caller, 1000, 0)
    w.end(call)
    assert w.mos_count("phone_out") == 0.0            # a phone call's score waits for the bridge's
    w.q.on_call_report(StoreReport(CID, "PCMU", {}, {}, mos=3.1, r_factor=62.0))
    assert w.stored()[-1] == (CID, 3.1, 62.0)
    assert w.mos_count("phone_out") == 1.0
    w.q.on_call_report(StoreReport(CID, "PCMU", {}, {}, mos=3.3, r_factor=65.0))   # again: stored, observed once
    assert w.stored()[-1] == (CID, 3.3, 65.0) and w.mos_count("phone_out") == 1.0


def test_a_bridge_report_for_a_call_not_tracked_goes_straight_to_the_record(w: World) -> None:
    w.q.on_call_report(StoreReport("call-9999", "PCMA", {}, {}, mos=4.0, r_factor=80.0))
    assert w.stored() == [("call-9999", 4.0, 80.0)]
    w.q.on_call_report(StoreReport("call-9999", "PCMA", {}, {}))         # no score: nothing
    assert len(w.stored()) == 1


def test_a_live_phone_call_takes_the_bridges_score_at_its_end(w: World) -> None:
    call = w.call(kind="phone_out")
    w.stats(w.caller, 1000, 0)
    w.q.on_call_report(StoreReport(CID, "PCMU", {}, {}, mos=2.0, r_factor=40.0))
    assert w.stored() == []                           # not ended: nothing to write yet
    w.end(call)
    assert w.stored() == [(CID, 2.0, 40.0)] and w.mos_count("phone_out") == 1.0


def test_without_a_call_log_nothing_is_queued() -> None:
    hub = FakeHub()
    q = CallQuality(cast(Hub, hub), None, ServerMetrics(enabled=False), clock=Clock(), wall=lambda: 0.0)
    q.register()
    c = Call(CID, "alice", "bob", ("audio",), "s-a", answered_session="s-b", answered_at=0.0)
    hub.calls[CID] = c
    q.on_stats(cast(Session, FakeSession("s-a")), CallStats(CID, None, 100, 0, None, None, None, False))
    q.on_call_ended(c)
    q.on_call_report(StoreReport("other-call", "PCMU", {}, {}, mos=4.0, r_factor=80.0))
    assert hub.writes == []

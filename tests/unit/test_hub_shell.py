"""The Hub shell on a fake event loop in virtual time: one loop timer follows the core's next
deadline, commands reach Session objects, call records and hooks survive failures."""

from __future__ import annotations

import asyncio
from dataclasses import dataclass, field
from typing import Any, cast

import pytest

from jego_call.calllog import CallLog, CallRecord
from jego_call.config import CallsConfig
from jego_call.errors import ErrorCode, SignallingError
from jego_call.signalling import messages as m
from jego_call.signalling.hub import Call, Hub
from jego_call.signalling.hub_core import Directory

from .hubkit import ANSWER, SDP, MemoryDirectory

CID = "call-0001"


class FakeHandle:
    def __init__(self, loop: FakeLoop, when: float, cb: Any) -> None:
        self.loop, self.when, self.cb, self.cancelled = loop, when, cb, False

    def cancel(self) -> None:
        self.cancelled = True


class FakeLoop:
    """`time()` and `call_at()` of an event loop, on a clock the test moves."""

    def __init__(self) -> None:
        self.now = 500.0
        self.handles: list[FakeHandle] = []

    def time(self) -> float:
        return self.now

    def call_at(self, when: float, cb: Any, *args: Any) -> FakeHandle:
        h = FakeHandle(self, when, lambda: cb(*args))
        self.handles.append(h)
        return h

    def live(self) -> list[FakeHandle]:
        return [h for h in self.handles if not h.cancelled and h.cb is not None]

    def advance(self, seconds: float) -> None:
        target = self.now + seconds
        for _ in range(1000):  # a timer that re-arms itself for the same instant would spin here
            due = sorted((h for h in self.live() if h.when <= target), key=lambda h: h.when)
            if not due:
                break
            h = due[0]
            self.now = max(self.now, h.when - 0.0005)  # loops may fire a little early
            cb, h.cb = h.cb, None
            cb()
        else:
            raise AssertionError("timers keep firing without progress")
        self.now = target


@dataclass(eq=False)
class FakeSession:
    id: str
    username: str
    role: str = "user"
    sent: list[dict[str, Any]] = field(default_factory=list)
    closed: tuple[int, str] | None = None

    def send(self, msg: dict[str, Any]) -> None:
        self.sent.append(msg)

    def close(self, code: int, reason: str) -> None:
        self.closed = (code, reason)

    def got(self, type_: str) -> list[dict[str, Any]]:
        return [x for x in self.sent if x["type"] == type_]


class FakeCallLog:
    def __init__(self, fail: bool = False) -> None:
        self.records: list[CallRecord] = []
        self.reports: list[tuple[Any, ...]] = []
        self.fail = fail

    def record(self, rec: CallRecord) -> None:
        if self.fail:
            raise OSError("disk full")
        self.records.append(rec)

    def report(self, call_id: str, codec: str | None, app: dict[str, int], phone: dict[str, int]) -> bool:
        self.reports.append((call_id, codec, app, phone))
        return True


def make_hub(loop: FakeLoop, call_log: FakeCallLog | None = None, **cfg: Any) -> Hub:
    directory = MemoryDirectory({"alice", "bob"}, {"alice": ["bob"], "bob": ["alice"]})
    wall = iter(range(1_000_000, 2_000_000, 10))
    return Hub(cast(Directory, directory), CallsConfig(**cfg), loop=cast(asyncio.AbstractEventLoop, loop),
               call_log=cast(CallLog, call_log), wall_clock=lambda: float(next(wall)))


def parse(**fields: Any) -> Any:
    return m.parse_message(fields)


def pair(hub: Hub) -> tuple[FakeSession, FakeSession]:
    a, b = FakeSession(hub.new_session_id(), "alice"), FakeSession(hub.new_session_id(), "bob")
    hub.attach(a, "alice", hello={"type": "auth_ok"})
    hub.attach(b, "bob")
    return a, b


def test_one_timer_follows_the_core_deadline() -> None:
    loop = FakeLoop()
    hub = make_hub(loop, ring_timeout_s=45, max_call_s=600)
    a, b = pair(hub)
    assert loop.live() == []
    hub.handle(a, parse(type="invite", call_id=CID, to="bob", sdp=SDP))
    [ring] = loop.live()
    assert ring.when == 545.0
    loop.advance(10)
    hub.handle(b, parse(type="ringing", call_id=CID))
    assert loop.live() == [ring]  # same deadline: the timer is not re-armed
    hub.handle(b, parse(type="accept", call_id=CID, sdp=ANSWER))
    [max_len] = loop.live()
    assert ring.cancelled and max_len.when == 510.0 + 600
    loop.advance(599.9)
    assert a.got("call_ended") == [] and hub.calls[CID].sm.state.value == "connected"
    loop.advance(0.1)
    assert a.got("call_ended")[0]["reason"] == "max_duration"
    assert b.got("call_ended")[0]["reason"] == "max_duration"
    assert loop.live() == [] and hub.calls == {}


def test_ring_timeout_fires_through_the_loop_and_hangup_cancels_the_timer() -> None:
    loop = FakeLoop()
    log = FakeCallLog()
    hub = make_hub(loop, log, ring_timeout_s=30)
    a, b = pair(hub)
    hub.handle(a, parse(type="invite", call_id=CID, to="bob", sdp=SDP))
    loop.advance(30)
    assert [x["reason"] for x in a.got("call_ended")] == ["no_answer"]
    [rec] = log.records
    assert rec.outcome == "no_answer" and rec.started_at == 1_000_000.0 and rec.ended_at == 1_000_010.0
    hub.handle(a, parse(type="invite", call_id="call-0002", to="bob", sdp=SDP))
    hub.handle(a, parse(type="cancel", call_id="call-0002"))
    assert loop.live() == []


def test_hooks_and_a_failing_call_log_never_break_teardown() -> None:
    loop = FakeLoop()
    hub = make_hub(loop, FakeCallLog(fail=True))
    seen: list[Call] = []

    def bad(call: Call) -> None:
        raise RuntimeError("hook bug")

    hub.on_call_ended += [bad, seen.append]
    a, b = pair(hub)
    hub.handle(a, parse(type="invite", call_id=CID, to="bob", sdp=SDP))
    hub.handle(b, parse(type="decline", call_id=CID))
    assert a.got("call_ended")[0]["reason"] == "declined"
    assert [c.id for c in seen] == [CID] and seen[0].end_reason == "declined"
    assert hub.user_call == {} and hub.presence("alice") == "online"


def test_sessions_registry_and_other_features_handlers() -> None:
    loop = FakeLoop()
    hub = make_hub(loop)
    a, b = pair(hub)
    assert a.sent[0] == {"type": "auth_ok"}
    assert hub.sessions == {"alice": {a}, "bob": {b}}
    got: list[tuple[Any, Any]] = []
    hub.register_handler(m.Ping, lambda s, msg: got.append((s, msg)))
    hub.handle(a, m.Ping())
    assert got == [(a, m.Ping())]
    with pytest.raises(SignallingError) as info:
        hub.handle(a, m.Auth("token"))  # a parsed type nobody routes here
    assert info.value.code is ErrorCode.UNKNOWN_TYPE
    assert hub.send_to_user("bob", {"type": "x"}) == 1 and b.sent[-1] == {"type": "x"}
    hub.detach(FakeSession("s99", "bob"))  # never attached: nothing happens
    assert hub.sessions["bob"] == {b}
    hub.detach(b)
    assert "bob" not in hub.sessions and a.sent[-1] == {"type": "presence", "username": "bob", "presence": "offline", "display_name": "bob"}
    hub.detach(b)  # twice: harmless
    hub.contact_added("alice", "bob")
    assert a.sent[-1] == {"type": "presence", "username": "bob", "presence": "offline", "display_name": "bob"}


def test_gateway_and_shutdown_through_the_shell() -> None:
    loop = FakeLoop()
    log = FakeCallLog()
    hub = make_hub(loop, log)
    a, _b = pair(hub)
    gw = FakeSession(hub.new_session_id(), "gateway:gw", "gateway")
    hub.attach_gateway(gw, "gw", 2, hello={"type": "auth_ok", "role": "gateway"})
    assert gw.sent == [{"type": "auth_ok", "role": "gateway"}]
    assert hub.pick_gateway() is hub.gateways[gw.id]
    hub.handle(a, parse(type="invite", call_id=CID, to="+8613800138000", sdp=SDP))
    assert gw.got("invite")[0]["to"] == "+8613800138000"
    hub.handle(gw, parse(type="call_report", call_id=CID, codec="PCMU", app={}, phone={}))
    assert log.reports == [(CID, "PCMU", {}, {})]
    hub.shutdown()
    assert a.got("call_ended")[-1]["reason"] == "server_shutdown"
    assert a.closed == gw.closed == (1001, "server shutdown")
    assert hub.closing and loop.live() == []

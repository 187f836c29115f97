"""bridge/gateway/worker.py's decisions, with no server and no SIP: what each server message does
(auth_ok arms the worker with its ICE servers and transport policy, fresh TURN credentials are
taken, a message goes to its call or to its conference leg), an invite beyond capacity is
declined with congestion (Q.850 34) and never squeezed in, a phone for a group call that is not
here is declined, and the trunk's inbound calls are refused for a number that is not ours (404,
Q.850 1), before the server is reachable (503, 41) and at capacity (503, 34).
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass, field
from typing import Any, cast

import pytest

from bridge.gateway.call import BridgeCall
from bridge.gateway.conference import Conference
from bridge.gateway.conference_core import PhoneServer
from bridge.gateway.fakes import FakeLeg
from bridge.gateway.legs import SipLeg, SipTrunk
from bridge.gateway.worker import BridgeWorker


class FakeTrunk:
    def __init__(self) -> None:
        self.legs: list[str] = []

    def new_leg(self, call_id: str) -> SipLeg:
        self.legs.append(call_id)
        return cast(SipLeg, FakeLeg(call_id))


@dataclass
class Posted:
    """A call or conference that records what it was posted."""

    got: list[Any] = field(default_factory=list)

    def post(self, msg: Any) -> None:
        self.got.append(msg)


@pytest.fixture
def trunk() -> FakeTrunk:
    return FakeTrunk()


@pytest.fixture
def worker(trunk: FakeTrunk) -> tuple[BridgeWorker, list[dict[str, Any]]]:
    w = BridgeWorker("http://127.0.0.1:9/", "secret", cast(SipTrunk, trunk), name="w1", max_calls=1,
                     did={"+86 10 6552 9988": "alice"})
    sent: list[dict[str, Any]] = []

    async def send(msg: dict[str, Any]) -> None:
        sent.append(msg)

    w.send = send  # type: ignore[method-assign]
    return w, sent


async def test_auth_ok_arms_the_worker(worker: tuple[BridgeWorker, list[dict[str, Any]]]) -> None:
    w, _ = worker
    assert w.server_url == "http://127.0.0.1:9" and not w.ready.is_set()
    await w._dispatch({"type": "auth_ok", "ice_servers": [{"urls": "turn:127.0.0.1"}], "ice_transport_policy": "relay"})
    assert w.ready.is_set() and w.connects == 1
    assert w.ice_servers == [{"urls": "turn:127.0.0.1"}] and w.settings.ice_transport_policy == "relay"
    await w._dispatch({"type": "auth_ok", "ice_transport_policy": "anything else"})
    assert w.connects == 2 and w.ice_servers == [] and w.settings.ice_transport_policy == "all"
    await w._dispatch({"type": "ice_servers", "ice_servers": [{"urls": "stun:127.0.0.1"}]})
    assert w.ice_servers == [{"urls": "stun:127.0.0.1"}]


async def test_an_invite_beyond_capacity_is_declined_and_never_placed(
        worker: tuple[BridgeWorker, list[dict[str, Any]]], trunk: FakeTrunk) -> None:
    w, sent = worker
    w.calls["busy-call-1"] = cast(BridgeCall, Posted())
    await w._dispatch({"type": "invite", "call_id": "call-2222", "to": "+8613800138000", "sdp": "v=0"})
    assert sent == [{"type": "decline", "call_id": "call-2222", "reason": "congestion", "sip_code": None,
                     "q850_cause": 34, "detail": "the phone gateway is at capacity"}]
    assert w.refused == 1 and trunk.legs == [] and set(w.calls) == {"busy-call-1"}


async def test_an_invite_for_a_call_already_here_is_ignored(worker: tuple[BridgeWorker, list[dict[str, Any]]],
                                                            trunk: FakeTrunk) -> None:
    w, sent = worker
    existing = Posted()
    w.calls["call-1111"] = cast(BridgeCall, existing)
    await w._dispatch({"type": "invite", "call_id": "call-1111", "to": "+8613800138000"})
    assert sent == [] and trunk.legs == [] and w.refused == 0 and existing.got == []


async def test_messages_go_to_their_call(worker: tuple[BridgeWorker, list[dict[str, Any]]]) -> None:
    w, sent = worker
    call = Posted()
    w.calls["call-1111"] = cast(BridgeCall, call)
    for msg in ({"type": "answer", "call_id": "call-1111", "sdp": "v=0"}, {"type": "hangup", "call_id": "call-1111"}):
        await w._dispatch(msg)
    assert [m["type"] for m in call.got] == ["answer", "hangup"]
    await w._dispatch({"type": "hangup", "call_id": "someone-else"})      # no such call: dropped
    await w._dispatch({"type": "error", "call_id": "gone", "code": "unknown_call"})
    assert len(call.got) == 2 and sent == []


async def test_a_conference_legs_messages_go_to_its_conference(worker: tuple[BridgeWorker, list[dict[str, Any]]]) -> None:
    w, _ = worker
    conf = Posted()
    w._conference_legs["phone-leg-1"] = cast(Conference, conf)
    msg = {"type": "cancel", "call_id": "phone-leg-1"}
    await w._dispatch(msg)
    assert conf.got == [PhoneServer("phone-leg-1", msg)]


async def test_a_phone_for_a_group_call_that_is_not_here_is_declined(
        worker: tuple[BridgeWorker, list[dict[str, Any]]], trunk: FakeTrunk) -> None:
    w, sent = worker
    await w._dispatch({"type": "invite", "call_id": "phone-leg-2", "to": "+8613800138000", "from": "mum",
                       "conference": "group-call-x"})
    await asyncio.gather(*(asyncio.all_tasks() - {asyncio.current_task()}))   # the decline is sent in a task
    assert sent == [{"type": "decline", "call_id": "phone-leg-2", "reason": "failed", "sip_code": None,
                     "q850_cause": 41, "detail": "that group call is not on this gateway"}]
    assert trunk.legs == [] and "phone-leg-2" not in w._conference_legs


async def test_conference_messages_for_a_conference_not_here_are_ignored(
        worker: tuple[BridgeWorker, list[dict[str, Any]]]) -> None:
    w, sent = worker
    for kind in ("conference_ice", "conference_leave", "conference_mute", "conference_close"):
        await w._dispatch({"type": kind, "call_id": "group-call-x", "leg": "alice.1"})
    assert w.conferences == {} and sent == []


async def test_a_conference_that_is_done_forgets_its_legs(worker: tuple[BridgeWorker, list[dict[str, Any]]]) -> None:
    w, _ = worker
    conf = cast(Conference, type("C", (), {"call_id": "g1"})())
    other = cast(Conference, type("C", (), {"call_id": "g2"})())
    w.conferences.update(g1=conf, g2=other)
    w._conference_legs.update(p1=conf, p2=conf, p3=other)
    w._conference_done(conf)
    assert set(w.conferences) == {"g2"} and w._conference_legs == {"p3": other}


# --- inbound calls from the trunk --------------------------------------------------------------------
async def test_a_call_to_a_number_that_is_not_ours_is_404_unallocated(
        worker: tuple[BridgeWorker, list[dict[str, Any]]]) -> None:
    w, _ = worker
    leg = FakeLeg("in-1", inbound=True)
    await w._inbound(cast(SipLeg, leg), "+8613800138000", "+861065529999")
    assert leg.calls == [("reject", (404, 1))] and w.calls == {}


async def test_an_inbound_call_before_the_server_is_reachable_is_503(
        worker: tuple[BridgeWorker, list[dict[str, Any]]]) -> None:
    w, _ = worker
    leg = FakeLeg("in-1", inbound=True)
    await w._inbound(cast(SipLeg, leg), "+8613800138000", "+861065529988")   # the DID, written another way
    assert leg.calls == [("reject", (503, 41))] and w.calls == {}


async def test_an_inbound_call_at_capacity_is_503_no_circuit(worker: tuple[BridgeWorker, list[dict[str, Any]]]) -> None:
    w, _ = worker
    w.ready.set()
    w.calls["busy-call-1"] = cast(BridgeCall, Posted())
    leg = FakeLeg("in-1", inbound=True)
    await w._inbound(cast(SipLeg, leg), "+8613800138000", "010 6552 9988")   # national form
    assert leg.calls == [("reject", (503, 34))] and w.refused == 1 and set(w.calls) == {"busy-call-1"}


def test_did_numbers_are_kept_in_e164(worker: tuple[BridgeWorker, list[dict[str, Any]]]) -> None:
    w, _ = worker
    assert w.did == {"+861065529988": "alice"}

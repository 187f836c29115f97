"""Phone calls through a gateway (a bridge worker speaking the signalling protocol).

The gateway here is a real WebSocket client authenticating with `gateway_auth`, so these tests
prove the server's side of docs/signalling.md "Phone calls and gateways" without SIP.
"""

from __future__ import annotations

from typing import Any

import pytest

from jego_call.signalling.keys import GATEWAY_SECRET, HUB

from .conftest import Factory
from .sigclient import FAKE_SDP, AppClient, Ws, give_credit, new_call_id
from .sigclient import register as register_user

ANSWER = FAKE_SDP + "a=answer\r\n"

# Each test runs on SQLite and on PostgreSQL (tests/integration/conftest.py): on PostgreSQL the
# credit check of a paid call is made by the socket shell before the hub sees the invite.
pytestmark = pytest.mark.backends("sqlite", "postgres")


@pytest.fixture
async def client(make_client: Factory) -> AppClient:
    c: AppClient = await make_client(calls={"ring_timeout_s": 3.0})
    return c


async def register(client: AppClient, name: str) -> str:
    """A user with 50 CNY of prepaid credit (calls to phones are paid)."""
    token = await register_user(client, name)
    await give_credit(client, name)
    return token


async def gateway(client: AppClient, capacity: int = 4, name: str = "gw1") -> Ws:
    ws = await Ws.open(client)
    await ws.send({"type": "gateway_auth", "secret": client.app[GATEWAY_SECRET], "name": name,
                   "capacity": capacity})
    ok = await ws.expect("auth_ok")
    assert ok["role"] == "gateway"
    return ws


async def dial(ws: Ws, to: str) -> str:
    cid = new_call_id()
    await ws.send({"type": "invite", "call_id": cid, "to": to, "media": ["audio"], "sdp": FAKE_SDP})
    return cid


async def history(client: AppClient, token: str) -> list[dict[str, Any]]:
    res = await client.get("/api/calls", headers={"Authorization": f"Bearer {token}"})
    assert res.status == 200
    calls: list[dict[str, Any]] = (await res.json())["calls"]
    return calls


async def test_wrong_gateway_secret(client: AppClient) -> None:
    ws = await Ws.open(client)
    await ws.send({"type": "gateway_auth", "secret": "guess", "name": "x", "capacity": 1})
    err = await ws.expect_error("auth_failed")
    assert "secret" in err["message"]


async def test_app_to_phone_call_with_early_media(client: AppClient) -> None:
    token = await register(client, "alice")
    alice = await Ws.open(client, token)
    gw = await gateway(client)
    cid = await dial(alice, "138 0013 8000")  # a bare mobile, with spaces
    inv = await gw.expect("invite", call_id=cid)
    assert inv["to"] == "+8613800138000" and inv["from"] == "alice" and inv["sdp"] == FAKE_SDP
    await gw.send({"type": "ringing", "call_id": cid, "sip_code": 183, "sdp": ANSWER})
    ring = await alice.expect("ringing", call_id=cid)
    assert ring["sdp"] == ANSWER and ring["early_media"] is True and ring["sip_code"] == 183
    await alice.expect("call_state", call_id=cid, state="ringing")
    await gw.send({"type": "accept", "call_id": cid})
    acc = await alice.expect("accept", call_id=cid)
    assert "sdp" not in acc  # the answer already came with the early media
    await alice.expect("call_state", call_id=cid, state="connected")
    await alice.send({"type": "dtmf", "call_id": cid, "digits": "0123456789*#"})
    assert (await gw.expect("dtmf", call_id=cid))["digits"] == "0123456789*#"
    await gw.send({"type": "hangup", "call_id": cid, "q850_cause": 16})
    ended = await alice.expect("call_ended", call_id=cid)
    assert ended["reason"] == "hangup" and ended["by"] == "+8613800138000" and ended["q850_cause"] == 16
    await gw.send({"type": "call_report", "call_id": cid, "codec": "PCMU",
                   "app": {"packets_sent": 500, "packets_received": 498, "packets_lost": 2},
                   "phone": {"packets_sent": 499, "packets_received": 500, "packets_lost": 0}})
    await gw.send({"type": "ping"})
    await gw.expect("pong")
    await client.app[HUB].drain()   # the record and the report are written (by the hub's writer task)
    [rec] = await history(client, token)
    assert rec["call_id"] == cid and rec["direction"] == "outgoing" and rec["peer"] == "+8613800138000"
    assert rec["peer_kind"] == "phone" and rec["outcome"] == "hangup" and rec["codec"] == "PCMU"
    assert rec["app"]["packets_lost"] == 2 and rec["answered_at"] is not None


@pytest.mark.parametrize(
    ("reason", "sip", "q850"),
    [("busy", 486, 17), ("no_answer", 480, 19), ("invalid_number", 404, 1), ("congestion", 503, 34)],
)
async def test_carrier_outcomes_reach_the_app(client: AppClient, reason: str, sip: int, q850: int) -> None:
    alice = await Ws.open(client, await register(client, "alice"))
    gw = await gateway(client)
    cid = await dial(alice, "+8613900000486")
    await gw.expect("invite", call_id=cid)
    await gw.send({"type": "decline", "call_id": cid, "reason": reason, "sip_code": sip, "q850_cause": q850,
                   "detail": "from the carrier"})
    ended = await alice.expect("call_ended", call_id=cid)
    assert (ended["reason"], ended["sip_code"], ended["q850_cause"]) == (reason, sip, q850)


@pytest.mark.parametrize(
    ("to", "reason"),
    [("+86123", "invalid_number"), ("0086 571 1234567", "invalid_number"), ("110", "emergency"),
     ("+86 120", "emergency"), ("+49 30 12345678", "rejected"), ("12", "invalid_number")],
)
async def test_numbers_refused_without_sip(client: AppClient, to: str, reason: str) -> None:
    alice = await Ws.open(client, await register(client, "alice"))
    gw = await gateway(client)
    cid = await dial(alice, to)
    ended = await alice.expect("call_ended", call_id=cid)
    assert ended["reason"] == reason, ended
    assert ended["sip_code"] is None
    if reason == "emergency":
        assert "use a local phone" in ended["detail"]
    await gw.no_message("invite")


async def test_no_gateway_and_capacity(client: AppClient) -> None:
    alice = await Ws.open(client, await register(client, "alice"))
    bob = await Ws.open(client, await register(client, "bob"))
    cid = await dial(alice, "+8613800138000")
    assert (await alice.expect("call_ended", call_id=cid))["reason"] == "unreachable"
    gw = await gateway(client, capacity=1)
    cid = await dial(alice, "+8613800138000")
    await gw.expect("invite", call_id=cid)
    cid2 = await dial(bob, "+8613800138000")
    assert (await bob.expect("call_ended", call_id=cid2))["reason"] == "unreachable"  # refused, not squeezed in
    gw2 = await gateway(client, capacity=2, name="gw2")
    cid3 = await dial(bob, "+8613800138000")
    await gw2.expect("invite", call_id=cid3)


async def test_gateway_lost_ends_its_calls(client: AppClient) -> None:
    alice = await Ws.open(client, await register(client, "alice"))
    gw = await gateway(client)
    cid = await dial(alice, "+8613800138000")
    await gw.expect("invite", call_id=cid)
    await gw.send({"type": "accept", "call_id": cid, "sdp": ANSWER})
    assert (await alice.expect("accept", call_id=cid))["sdp"] == ANSWER
    await gw.close()
    assert (await alice.expect("call_ended", call_id=cid, timeout=10))["reason"] == "connection_lost"


async def test_phone_to_app(client: AppClient) -> None:
    tb = await register(client, "bob")
    gw = await gateway(client)
    cid = await dial_from_phone(gw, "bob")
    ended = await gw.expect("call_ended", call_id=cid)
    assert ended["reason"] == "unavailable"  # nobody online: the gateway answers 480
    bob = await Ws.open(client, tb)
    cid = await dial_from_phone(gw, "bob")
    inv = await bob.expect("invite", call_id=cid)
    assert inv["from"] == "+8613800138000"
    await bob.send({"type": "ringing", "call_id": cid})
    await gw.expect("ringing", call_id=cid)
    await bob.send({"type": "accept", "call_id": cid, "sdp": ANSWER})
    assert (await gw.expect("accept", call_id=cid))["sdp"] == ANSWER
    await bob.send({"type": "hangup", "call_id": cid})
    assert (await gw.expect("call_ended", call_id=cid))["reason"] == "hangup"
    rec, missed = await history(client, tb)  # newest first
    assert rec["direction"] == "incoming" and rec["peer"] == "+8613800138000" and rec["peer_kind"] == "phone"
    assert rec["outcome"] == "hangup" and missed["outcome"] == "unavailable"


async def dial_from_phone(gw: Ws, user: str) -> str:
    cid = new_call_id()
    await gw.send({"type": "invite", "call_id": cid, "to": user, "from": "+8613800138000", "media": ["audio"],
                   "sdp": FAKE_SDP})
    return cid


async def test_users_cannot_use_gateway_fields(client: AppClient) -> None:
    ta = await register(client, "alice")
    tb = await register(client, "bob")
    alice, bob = await Ws.open(client, ta), await Ws.open(client, tb)
    cid = await dial(alice, "bob")
    await bob.expect("invite", call_id=cid)
    await bob.send({"type": "decline", "call_id": cid, "reason": "congestion"})
    await bob.expect_error("invalid_message")
    await bob.send({"type": "ringing", "call_id": cid, "sdp": ANSWER})
    await bob.expect_error("invalid_message")
    await bob.send({"type": "accept", "call_id": cid})
    await bob.expect_error("invalid_message")
    await alice.send({"type": "call_report", "call_id": cid, "app": {}, "phone": {}})
    await alice.expect_error("forbidden")

"""The signalling protocol over real sockets: accounts API, WebSocket errors, call outcomes."""

from __future__ import annotations

import json
from typing import Any

import pytest
from aiohttp import WSMsgType

from jego_call.signalling.keys import HUB

from .conftest import Factory
from .sigclient import FAKE_SDP, PASSWORD, AppClient, Ws, add_contact, new_call_id, register

# Each test on a client runs embedded (SQLite, in-memory state) and as a cluster node on a real
# PostgreSQL and a real redis-server (tests/integration/conftest.py).
pytestmark = pytest.mark.backends("sqlite", "cluster")


async def pair(client: AppClient) -> tuple[Ws, Ws, str, str]:
    ta = await register(client, "alice")
    tb = await register(client, "bob")
    await add_contact(client, ta, "bob")
    await add_contact(client, tb, "alice")
    return await Ws.open(client, ta), await Ws.open(client, tb), ta, tb


async def invite(a: Ws, to: str = "bob", media: list[str] | None = None) -> str:
    cid = new_call_id()
    await a.send({"type": "invite", "call_id": cid, "to": to, "media": media or ["audio"], "sdp": FAKE_SDP})
    return cid


# -- accounts API ---------------------------------------------------------------------------
async def test_register_login_me_contacts(client: AppClient) -> None:
    token = await register(client, "Alice")
    res = await client.get("/api/me", headers={"Authorization": f"Bearer {token}"})
    assert (await res.json())["username"] == "alice"
    res = await client.post("/api/login", json={"username": "ALICE", "password": PASSWORD})
    assert res.status == 200
    login_token = (await res.json())["token"]
    await register(client, "bob")
    await add_contact(client, login_token, "bob")
    res = await client.get("/api/contacts", headers={"Authorization": f"Bearer {login_token}"})
    # issue 11: contacts carry display names (the username until one is set), and blocks come along
    assert await res.json() == {"contacts": [{"username": "bob", "display_name": "bob", "presence": "offline"}],
                                "blocked": []}


@pytest.mark.parametrize(
    ("path", "body", "status", "code"),
    [
        ("/api/register", {"username": "x", "password": PASSWORD}, 400, "invalid_username"),
        ("/api/register", {"username": "carol", "password": "short"}, 400, "weak_password"),
        ("/api/register", {"username": "alice", "password": PASSWORD}, 409, "username_taken"),
        ("/api/register", [1, 2], 400, "invalid_json"),
        ("/api/login", {"username": "alice", "password": "wrong-password"}, 401, "auth_failed"),
        ("/api/login", {"username": "nobody", "password": PASSWORD}, 401, "auth_failed"),
    ],
)
async def test_account_errors(client: AppClient, path: str, body: Any, status: int, code: str) -> None:
    await register(client, "alice")
    res = await client.post(path, json=body)
    assert res.status == status
    assert (await res.json())["error"]["code"] == code


async def test_api_needs_token_and_rejects_bad_json(client: AppClient) -> None:
    res = await client.get("/api/me")
    assert res.status == 401 and (await res.json())["error"]["code"] == "not_authenticated"
    res = await client.get("/api/me", headers={"Authorization": "Bearer forged.token"})
    assert res.status == 401
    token = await register(client, "alice")
    res = await client.post("/api/contacts", data=b"{not json", headers={"Authorization": f"Bearer {token}"})
    assert (await res.json())["error"]["code"] == "invalid_json"
    res = await client.post("/api/contacts", json={"username": "alice"}, headers={"Authorization": f"Bearer {token}"})
    assert (await res.json())["error"]["code"] == "self_contact"
    res = await client.post("/api/contacts", json={"username": "ghost"}, headers={"Authorization": f"Bearer {token}"})
    assert res.status == 404 and (await res.json())["error"]["code"] == "unknown_user"


# -- WebSocket bad input --------------------------------------------------------------------
async def test_bad_frames_get_errors_and_connection_lives(client: AppClient) -> None:
    token = await register(client, "alice")
    ws = await Ws.open(client)
    await ws.send({"type": "invite", "call_id": new_call_id(), "to": "bob", "sdp": FAKE_SDP})
    await ws.expect_error("not_authenticated")
    await ws.send({"type": "auth", "token": "garbage"})
    await ws.expect_error("auth_failed")
    await ws.send({"type": "auth", "token": token})
    await ws.expect("auth_ok", username="alice")
    await ws.send_raw("{this is not json")
    await ws.expect_error("invalid_json")
    await ws.send_raw("[1, 2, 3]")
    await ws.expect_error("invalid_json")
    await ws.send({"type": "invite", "call_id": "short", "to": "bob", "sdp": FAKE_SDP, "id": 7})
    err = await ws.expect_error("invalid_message")
    assert err["ref"] == 7
    await ws.send({"type": "invite", "call_id": new_call_id(), "to": "bob", "media": ["smell"], "sdp": FAKE_SDP})
    await ws.expect_error("invalid_message")
    await ws.send({"type": "teleport"})
    await ws.expect_error("unknown_type")
    await ws.send({"no_type": True})
    await ws.expect_error("invalid_message")
    await ws.send_raw(json.dumps({"type": "ping", "pad": "x" * 70_000}))
    await ws.expect_error("message_too_large")
    nested: Any = []
    for _ in range(50):
        nested = [nested]
    await ws.send({"type": "ping", "deep": nested})
    await ws.expect_error("invalid_message")
    await ws.send({"type": "auth", "token": token})
    await ws.expect_error("already_authenticated")
    await ws.send({"type": "ping"})
    await ws.expect("pong")


async def test_oversized_frame_closes_1009_and_binary_1003(client: AppClient) -> None:
    token = await register(client, "alice")
    ws = await Ws.open(client, token)
    await ws.send_raw("x" * (1024 * 1024 + 10))
    msg = await ws.next_raw()
    while msg.type == WSMsgType.TEXT:
        msg = await ws.next_raw()
    assert ws.ws.close_code == 1009
    ws2 = await Ws.open(client, token)
    await ws2.ws.send_bytes(b"\x00\x01")
    msg = await ws2.next_raw()
    while msg.type == WSMsgType.TEXT:
        msg = await ws2.next_raw()
    assert ws2.ws.close_code == 1003


async def test_unauthenticated_socket_is_closed_after_timeout(client: AppClient) -> None:
    ws = await Ws.open(client)
    msg = await ws.next_raw()
    assert msg.type in (WSMsgType.CLOSE, WSMsgType.CLOSED, WSMsgType.CLOSING)
    assert ws.ws.close_code == 4001


async def test_rate_limit(make_client: Factory) -> None:
    client = await make_client(signalling={"rate_per_s": 1.0, "rate_burst": 5})
    ws = await Ws.open(client, await register(client, "alice"))
    for _ in range(8):
        await ws.send({"type": "ping"})
    err = await ws.expect_error("rate_limited")
    assert err["code"] == "rate_limited" and sum(m["type"] == "pong" for m in ws.seen) <= 5


# -- calls ----------------------------------------------------------------------------------
async def test_call_connects_relays_and_hangs_up(client: AppClient) -> None:
    a, b, _ta, tb = await pair(client)
    b2 = await Ws.open(client, tb)  # bob's second tab
    await a.expect("presence", username="bob", presence="online")
    cid = await invite(a, media=["audio", "video"])
    await a.expect("call_state", call_id=cid, state="calling")
    inv = await b.expect("invite", call_id=cid)
    assert inv["from"] == "alice" and inv["media"] == ["audio", "video"] and inv["sdp"] == FAKE_SDP
    await b2.expect("invite", call_id=cid)
    await b.send({"type": "ringing", "call_id": cid})
    await b2.send({"type": "ringing", "call_id": cid})
    await a.expect("ringing", call_id=cid)
    await a.send({"type": "ice", "call_id": cid, "candidate": {"candidate": "candidate:1 1 udp 1 127.0.0.1 5000 typ host",
                                                                "sdpMid": "0", "sdpMLineIndex": 0}})
    assert (await b2.expect("ice", call_id=cid))["candidate"]["sdpMid"] == "0"
    await b2.send({"type": "accept", "call_id": cid, "sdp": FAKE_SDP + "a=answer\r\n"})
    assert (await a.expect("accept", call_id=cid))["sdp"].endswith("a=answer\r\n")
    await a.expect("call_state", call_id=cid, state="connected")
    await b.expect("call_ended", call_id=cid, reason="answered_elsewhere")
    await b.send({"type": "accept", "call_id": cid, "sdp": FAKE_SDP})
    await b.expect_error("not_party")
    await b2.send({"type": "accept", "call_id": cid, "sdp": FAKE_SDP})
    await b2.expect_error("invalid_state")
    await a.expect("presence", username="bob", presence="in_call")
    await b2.send({"type": "ice", "call_id": cid, "candidate": None})
    assert (await a.expect("ice", call_id=cid))["candidate"] is None
    await a.send({"type": "dtmf", "call_id": cid, "digits": "12#"})
    assert (await b2.expect("dtmf", call_id=cid))["digits"] == "12#"
    await a.send({"type": "hangup", "call_id": cid})
    assert (await b2.expect("call_ended", call_id=cid))["reason"] == "hangup"
    ended = await a.expect("call_ended", call_id=cid)
    assert ended["reason"] == "hangup" and ended["by"] == "alice"
    await a.expect("presence", username="bob", presence="online")
    await a.send({"type": "hangup", "call_id": cid})
    await a.expect_error("unknown_call")


async def test_outsider_cannot_touch_a_call(client: AppClient) -> None:
    a, b, _ta, _tb = await pair(client)
    eve = await Ws.open(client, await register(client, "eve"))
    cid = await invite(a)
    await b.expect("invite", call_id=cid)
    for msg in ({"type": "accept", "call_id": cid, "sdp": FAKE_SDP}, {"type": "hangup", "call_id": cid},
                {"type": "ice", "call_id": cid, "candidate": None}, {"type": "cancel", "call_id": cid}):
        await eve.send(msg)
        await eve.expect_error("not_party")
    await a.send({"type": "accept", "call_id": cid, "sdp": FAKE_SDP})
    await a.expect_error("not_party")
    await b.send({"type": "cancel", "call_id": cid})
    await b.expect_error("not_party")


async def test_decline(client: AppClient) -> None:
    a, b, _ta, _tb = await pair(client)
    cid = await invite(a)
    await b.expect("invite", call_id=cid)
    await b.send({"type": "decline", "call_id": cid})
    assert (await a.expect("call_ended", call_id=cid))["reason"] == "declined"


async def test_busy_when_callee_in_a_call(client: AppClient) -> None:
    a, b, _ta, _tb = await pair(client)
    carol = await Ws.open(client, await register(client, "carol"))
    cid = await invite(a)
    await b.expect("invite", call_id=cid)
    await b.send({"type": "accept", "call_id": cid, "sdp": FAKE_SDP})
    await a.expect("call_state", call_id=cid, state="connected")
    cid2 = await invite(carol, "bob")
    assert (await carol.expect("call_ended", call_id=cid2))["reason"] == "busy"
    await b.no_message("invite")
    await a.send({"type": "invite", "call_id": new_call_id(), "to": "carol", "sdp": FAKE_SDP})
    await a.expect_error("already_in_call")


async def test_busy_decline(client: AppClient) -> None:
    a, b, _ta, _tb = await pair(client)
    cid = await invite(a)
    await b.expect("invite", call_id=cid)
    await b.send({"type": "decline", "call_id": cid, "reason": "busy"})
    assert (await a.expect("call_ended", call_id=cid))["reason"] == "busy"


async def test_no_answer_after_ring_timeout(client: AppClient) -> None:
    a, b, _ta, _tb = await pair(client)
    cid = await invite(a)
    await b.expect("invite", call_id=cid)
    await b.send({"type": "ringing", "call_id": cid})
    assert (await a.expect("call_ended", call_id=cid, timeout=5))["reason"] == "no_answer"
    assert (await b.expect("call_ended", call_id=cid))["reason"] == "no_answer"


async def test_offline_unknown_and_self(client: AppClient) -> None:
    ta = await register(client, "alice")
    await register(client, "bob")
    a = await Ws.open(client, ta)
    cid = await invite(a)
    assert (await a.expect("call_ended", call_id=cid))["reason"] == "unavailable"
    await a.send({"type": "invite", "call_id": cid, "to": "bob", "sdp": FAKE_SDP})
    await a.expect_error("call_exists")
    await invite(a, "ghost")
    await a.expect_error("unknown_user")
    await invite(a, "alice")
    await a.expect_error("self_call")


async def test_cancel_while_ringing(client: AppClient) -> None:
    a, b, _ta, _tb = await pair(client)
    cid = await invite(a)
    await b.expect("invite", call_id=cid)
    await a.send({"type": "cancel", "call_id": cid})
    assert (await b.expect("call_ended", call_id=cid))["reason"] == "cancelled"


async def test_dropped_socket_ends_call(client: AppClient) -> None:
    a, b, _ta, _tb = await pair(client)
    cid = await invite(a)
    await b.expect("invite", call_id=cid)
    await b.send({"type": "accept", "call_id": cid, "sdp": FAKE_SDP})
    await a.expect("call_state", call_id=cid, state="connected")
    await b.close()
    ended = await a.expect("call_ended", call_id=cid, timeout=10)
    assert ended["reason"] == "connection_lost" and ended["by"] == "bob"
    await a.expect("presence", username="bob", presence="offline")


async def test_dead_peer_detected_by_heartbeat(client: AppClient) -> None:
    """A peer that stops answering pings (no FIN) is dropped and its call ends within 10 s."""
    a, b, _ta, _tb = await pair(client)
    cid = await invite(a)
    await b.expect("invite", call_id=cid)
    await b.send({"type": "accept", "call_id": cid, "sdp": FAKE_SDP})
    await a.expect("call_state", call_id=cid, state="connected")
    # Freeze bob: stop reading so aiohttp's client never answers the server's pings.
    transport = b.ws._response.connection.transport  # type: ignore[union-attr]
    assert transport is not None
    transport.pause_reading()
    ended = await a.expect("call_ended", call_id=cid, timeout=10)
    assert ended["reason"] == "connection_lost"


async def test_shutdown_ends_calls_with_reason(client: AppClient) -> None:
    a, b, _ta, _tb = await pair(client)
    cid = await invite(a)
    await b.expect("invite", call_id=cid)
    client.app[HUB].shutdown()
    assert (await a.expect("call_ended", call_id=cid))["reason"] == "server_shutdown"
    assert (await b.expect("call_ended", call_id=cid))["reason"] == "server_shutdown"


async def test_concurrent_calls_do_not_disturb_each_other(client: AppClient) -> None:
    users = [f"user{i}" for i in range(6)]
    socks = {u: await Ws.open(client, await register(client, u)) for u in users}
    ids = []
    for caller, callee in zip(users[::2], users[1::2], strict=True):
        cid = await invite(socks[caller], callee)
        ids.append((caller, callee, cid))
    for caller, callee, cid in ids:
        await socks[callee].expect("invite", call_id=cid)
        await socks[callee].send({"type": "accept", "call_id": cid, "sdp": FAKE_SDP})
        await socks[caller].expect("call_state", call_id=cid, state="connected")
    await socks["user0"].send_raw("garbage")
    await socks["user0"].expect_error("invalid_json")
    caller, callee, cid = ids[1]
    await socks[caller].send({"type": "hangup", "call_id": cid})
    await socks[callee].expect("call_ended", call_id=cid)
    assert len(client.app[HUB].calls) == 2

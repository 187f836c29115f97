"""Two signalling nodes in one process on a real redis-server (tests/servers.py): calls,
presence, first answer wins, busy, gateways and messages across nodes, and Redis going away
and coming back. Each node is a whole `create_app` on its own 127.0.0.1 port; both share one
data dir (SQLite) as nodes share PostgreSQL. One redis-server serves the module; every test
has its own key prefix.

The process-level faults (kill -9 of a node, a dialer call with audio, a bridge worker on the
other node) are in test_cluster_live.py.
"""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator, Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from aiohttp.test_utils import TestClient, TestServer

from jego_call.config import load_config
from jego_call.signalling.keys import CALL_LOG, CLUSTER, DIRECTORY, GATEWAY_SECRET, HUB
from jego_call.signalling.server import create_app
from tests.helpers import until
from tests.servers import PostgresServer, RedisServer, postgres_server, redis_server

from .sigclient import FAKE_SDP, AppClient, Ws, add_contact, give_credit, new_call_id, register

ANSWER = FAKE_SDP + "a=answer\r\n"
Nodes = Callable[..., Any]


@pytest.fixture(scope="module")
def redis(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RedisServer]:
    with redis_server(tmp_path_factory.mktemp("redis")) as r:
        yield r


@pytest.fixture
async def nodes(redis: RedisServer, tmp_path: Path) -> AsyncIterator[Nodes]:
    """`await nodes("a", "b", **sections)`: one TestClient per node id, same data and prefix."""
    prefix = f"t{uuid.uuid4().hex[:10]}"
    clients: list[AppClient] = []

    async def start(*ids: str, **sections: dict[str, Any]) -> list[AppClient]:
        out = []
        for node_id in ids:
            overrides: dict[str, dict[str, Any]] = {
                "data": {"dir": str(tmp_path / "data")},
                "calls": {"ring_timeout_s": 3.0},
                "signalling": {"heartbeat_s": 1.0, "auth_timeout_s": 2.0},
                "cluster": {"redis_url": redis.url, "node_id": node_id, "key_prefix": prefix,
                            "heartbeat_s": 0.5, "node_ttl_s": 2.0, "op_timeout_s": 0.5},
            }
            for k, v in sections.items():
                overrides.setdefault(k, {}).update(v)
            cfg = load_config(None, environ={}, overrides=overrides)
            c = TestClient(TestServer(create_app(cfg), host="127.0.0.1"))
            await c.start_server()
            clients.append(c)
            out.append(c)
        return out

    yield start
    for c in reversed(clients):
        await c.close()


async def users(a: AppClient, *names: str) -> dict[str, str]:
    """Register `names` (on node a: the accounts are shared) as each other's contacts; tokens."""
    tokens = {n: await register(a, n) for n in names}
    for n in names:
        for other in names:
            if other != n:
                await add_contact(a, tokens[n], other)
    return tokens


async def settle(*clients: AppClient, users_online: dict[str, int] | None = None, timeout: float = 5.0) -> None:
    """Wait until every node's hub sees `users_online` (user -> sessions, cluster-wide)."""
    want = users_online or {}

    def views() -> list[dict[str, int]]:
        return [{u: len(c.app[HUB].core.user_sessions.get(u, ())) for u in want} for c in clients]

    await until(lambda: all(v == want for v in views()), timeout, f"every node to see {want}")


async def records(c: AppClient, cid: str) -> list[dict[str, Any]]:
    """The call records of `cid` (the nodes share one database)."""
    return [r for r in await c.app[CALL_LOG].all(1000) if r["call_id"] == cid]


async def invite(ws: Ws, to: str, cid: str | None = None) -> str:
    cid = cid or new_call_id()
    await ws.send({"type": "invite", "call_id": cid, "to": to, "media": ["audio"], "sdp": FAKE_SDP})
    return cid


async def test_call_across_nodes_relays_every_message_and_records_once(nodes: Nodes) -> None:
    a, b = await nodes("a", "b")
    t = await users(a, "alice", "bob")
    alice = await Ws.open(a, t["alice"])
    bob = await Ws.open(b, t["bob"])
    await settle(a, b, users_online={"alice": 1, "bob": 1})
    # presence crossed the nodes: alice (on a) hears bob come online on b
    assert any(m["type"] == "presence" and m["username"] == "bob" and m["presence"] == "online"
               for m in alice.seen) or (await alice.expect("presence", username="bob", presence="online"))
    cid = await invite(alice, "bob")
    inv = await bob.expect("invite", call_id=cid)
    assert inv["from"] == "alice" and inv["sdp"] == FAKE_SDP
    await bob.send({"type": "ringing", "call_id": cid})
    await alice.expect("call_state", call_id=cid, state="ringing")
    await bob.send({"type": "accept", "call_id": cid, "sdp": ANSWER})
    acc = await alice.expect("accept", call_id=cid)
    assert acc["sdp"] == ANSWER
    await bob.expect("call_state", call_id=cid, state="connected")
    await alice.expect("presence", username="bob", presence="in_call")
    await bob.expect("presence", username="alice", presence="in_call")
    # the owner is the caller's node; b relays bob's messages to it
    assert cid in a.app[HUB].calls and cid not in b.app[HUB].calls
    await bob.send({"type": "ice", "call_id": cid, "candidate": {"candidate": "c1"}})
    assert (await alice.expect("ice", call_id=cid))["candidate"]["candidate"] == "c1"
    await alice.send({"type": "dtmf", "call_id": cid, "digits": "12#"})
    assert (await bob.expect("dtmf", call_id=cid))["digits"] == "12#"
    await bob.send({"type": "hangup", "call_id": cid})
    end_a = await alice.expect("call_ended", call_id=cid)
    end_b = await bob.expect("call_ended", call_id=cid)
    assert end_a["reason"] == end_b["reason"] == "hangup" and end_a["by"] == "bob"
    recs = await records(a, cid)
    assert len(recs) == 1 and recs[0]["outcome"] == "hangup" and recs[0]["answered_at"] is not None
    # a message for the ended call from b gets the owner's answer
    await bob.send({"type": "hangup", "call_id": cid})
    assert (await bob.expect_error("unknown_call"))["call_id"] == cid
    # and both users are free again everywhere: a second call works the other way round
    cid2 = await invite(bob, "alice")
    await alice.expect("invite", call_id=cid2)
    await alice.send({"type": "decline", "call_id": cid2})
    assert (await bob.expect("call_ended", call_id=cid2))["reason"] == "declined"


async def test_first_answer_wins_with_devices_on_two_nodes(nodes: Nodes) -> None:
    a, b = await nodes("a", "b")
    t = await users(a, "alice", "bob")
    alice = await Ws.open(a, t["alice"])
    bob_a = await Ws.open(a, t["bob"])
    bob_b = await Ws.open(b, t["bob"])
    await settle(a, b, users_online={"alice": 1, "bob": 2})
    for round_ in range(3):
        cid = await invite(alice, "bob")
        await bob_a.expect("invite", call_id=cid)
        await bob_b.expect("invite", call_id=cid)
        # both devices answer at once; the owner (node a) takes the first that reaches it
        first, second = (bob_b, bob_a) if round_ % 2 == 0 else (bob_a, bob_b)
        await asyncio.gather(first.send({"type": "accept", "call_id": cid, "sdp": ANSWER}),
                             second.send({"type": "accept", "call_id": cid, "sdp": ANSWER}))
        acc = await alice.expect("accept", call_id=cid)
        await alice.no_message("accept", 0.3)
        assert acc["sdp"] == ANSWER
        call = a.app[HUB].core.calls[cid]
        winner = bob_a if call.answered_session.startswith("a-") else bob_b
        loser = bob_b if winner is bob_a else bob_a
        await winner.expect("call_state", call_id=cid, state="connected")
        ended = await loser.expect("call_ended", call_id=cid)
        assert ended["reason"] == "answered_elsewhere"
        await loser.expect_error("not_party")
        await alice.send({"type": "hangup", "call_id": cid})
        await winner.expect("call_ended", call_id=cid, reason="hangup")


async def test_busy_and_ring_timeout_across_nodes(nodes: Nodes) -> None:
    a, b = await nodes("a", "b")
    t = await users(b, "alice", "bob", "carol")       # written on b: a holds none of them yet
    alice = await Ws.open(a, t["alice"])
    bob = await Ws.open(b, t["bob"])
    carol = await Ws.open(b, t["carol"])
    await settle(a, b, users_online={"alice": 1, "bob": 1, "carol": 1})
    cid = await invite(carol, "bob")          # owned by b
    await bob.expect("invite", call_id=cid)
    await bob.send({"type": "accept", "call_id": cid, "sdp": ANSWER})
    await carol.expect("accept", call_id=cid)
    busy = await invite(alice, "bob")         # owned by a: bob is busy in b's call
    assert (await alice.expect("call_ended", call_id=busy))["reason"] == "busy"
    await bob.no_message("invite", 0.2)
    busy2 = await invite(alice, "carol")
    assert (await alice.expect("call_ended", call_id=busy2))["reason"] == "busy"
    # carol cannot start a second call from a either
    carol_a = await Ws.open(a, t["carol"])
    await invite(carol_a, "alice")
    await carol_a.expect_error("already_in_call")
    await carol.send({"type": "hangup", "call_id": cid})
    await bob.expect("call_ended", call_id=cid)
    await alice.expect("presence", username="bob", presence="online")
    # ring timeout, decided by the owner, reaches the callee on the other node
    cid3 = await invite(alice, "bob")
    await bob.expect("invite", call_id=cid3)
    e1 = await alice.expect("call_ended", call_id=cid3, timeout=6)
    e2 = await bob.expect("call_ended", call_id=cid3)
    assert e1["reason"] == e2["reason"] == "no_answer"


async def test_messages_reach_the_other_node_and_the_senders_other_devices(nodes: Nodes) -> None:
    a, b = await nodes("a", "b")
    t = await users(a, "alice", "bob")
    alice = await Ws.open(a, t["alice"])
    alice_b = await Ws.open(b, t["alice"])
    bob = await Ws.open(b, t["bob"])
    await settle(a, b, users_online={"alice": 2, "bob": 1})
    await alice.send({"type": "send_message", "client_id": "m1-hello", "to": "bob", "text": "你好"})
    ack = await alice.expect("message_ack", client_id="m1-hello")
    got = await bob.expect("message")
    assert got["message"]["text"] == "你好" and got["message"]["seq"] == ack["message"]["seq"]
    mine = await alice_b.expect("message")
    assert mine["message"]["client_id"] == "m1-hello"
    await bob.send({"type": "receipt", "with": "alice", "up_to_seq": got["message"]["seq"], "state": "read"})
    r = await alice.expect("receipt", state="read")
    assert r["by"] == "bob" and r["up_to_seq"] == got["message"]["seq"]


async def gateway(c: AppClient, capacity: int, name: str) -> Ws:
    ws = await Ws.open(c)
    await ws.send({"type": "gateway_auth", "secret": c.app[GATEWAY_SECRET], "name": name, "capacity": capacity})
    await ws.expect("auth_ok")
    return ws


async def test_phone_call_on_b_through_a_gateway_on_a_and_capacity_cluster_wide(nodes: Nodes) -> None:
    a, b = await nodes("a", "b")
    assert a.app[GATEWAY_SECRET] == b.app[GATEWAY_SECRET]  # shared through Redis
    t = await users(a, "alice", "bob")
    for name in ("alice", "bob"):  # calls to phones are paid (issue 13); the nodes share the ledger
        await give_credit(a, name)
    gw = await gateway(a, 1, "gw-a")
    alice = await Ws.open(b, t["alice"])
    bob = await Ws.open(a, t["bob"])
    await settle(a, b, users_online={"alice": 1, "bob": 1})
    await until(lambda: all(c.app[HUB].core.gateways for c in (a, b)), what="both nodes to know gw-a")
    cid = await invite(alice, "+86 138 0013 8000")
    inv = await gw.expect("invite", call_id=cid)
    assert inv["to"] == "+8613800138000" and inv["from"] == "alice"
    await gw.send({"type": "ringing", "call_id": cid, "sip_code": 183, "sdp": ANSWER})
    early = await alice.expect("ringing", call_id=cid)
    assert early["early_media"] is True and early["sdp"] == ANSWER
    await gw.send({"type": "accept", "call_id": cid})
    await alice.expect("call_state", call_id=cid, state="connected")
    # the only gateway is full: a second phone call, from the other node, finds no capacity
    cid2 = await invite(bob, "+8613800138001")
    ended = await bob.expect("call_ended", call_id=cid2)
    assert ended["reason"] == "unreachable"
    await gw.no_message("invite", 0.2)
    await gw.send({"type": "hangup", "call_id": cid, "q850_cause": 16})
    assert (await alice.expect("call_ended", call_id=cid))["reason"] == "hangup"
    await gw.send({"type": "call_report", "call_id": cid, "codec": "opus/PCMU",
                   "app": {"packets_sent": 10}, "phone": {"packets_received": 9}})

    async def reported() -> list[dict[str, Any]]:
        return [r for r in await records(b, cid) if r["codec"] == "opus/PCMU"]

    recs = await until(reported, what="the call report in b's call record")
    assert len(recs) == 1
    # capacity came back: the next call gets the gateway
    cid3 = await invite(bob, "+8613800138001")
    await gw.expect("invite", call_id=cid3)


async def test_phone_to_app_rings_devices_on_every_node(nodes: Nodes) -> None:
    a, b = await nodes("a", "b")
    t = await users(a, "bob")
    gw = await gateway(a, 2, "gw-a")
    bob_a = await Ws.open(a, t["bob"])
    bob_b = await Ws.open(b, t["bob"])
    await settle(a, b, users_online={"bob": 2})
    cid = new_call_id()
    await gw.send({"type": "invite", "call_id": cid, "to": "bob", "from": "+8613800138000", "media": ["audio"],
                   "sdp": FAKE_SDP})
    await bob_a.expect("invite", call_id=cid)
    await bob_b.expect("invite", call_id=cid)
    await bob_b.send({"type": "accept", "call_id": cid, "sdp": ANSWER})
    assert (await gw.expect("accept", call_id=cid))["sdp"] == ANSWER
    assert (await bob_a.expect("call_ended", call_id=cid))["reason"] == "answered_elsewhere"


async def test_redis_away_and_back(nodes: Nodes, redis: RedisServer) -> None:
    a, b = await nodes("a", "b")
    t = await users(b, "alice", "bob", "carol")       # written on b: a holds none of them yet
    alice = await Ws.open(a, t["alice"])
    bob = await Ws.open(b, t["bob"])
    carol = await Ws.open(a, t["carol"])
    await settle(a, b, users_online={"alice": 1, "bob": 1, "carol": 1})
    cid = await invite(alice, "bob")
    await bob.expect("invite", call_id=cid)
    await bob.send({"type": "accept", "call_id": cid, "sdp": ANSWER})
    await alice.expect("accept", call_id=cid)
    redis.server.stop()
    try:
        async def degraded() -> dict[str, Any] | None:
            res = await a.get("/healthz")
            return await res.json() if res.status == 503 else None

        body = await until(degraded, 5, "/healthz to say 503")  # within a heartbeat or two
        loop = asyncio.get_running_loop()
        assert body["status"] == "degraded" and body["shared_state"] == "unreachable" and body["node"] == "a"
        ready = await a.get("/readyz")
        assert ready.status == 503 and "redis" in (await ready.json())["failing"]
        t0 = loop.time()
        cid2 = await invite(carol, "alice")
        err = await carol.expect_error("service_unavailable")
        assert err["call_id"] == cid2 and loop.time() - t0 < 1.0  # at once, not a hang
        # the call in progress is not ended by the outage
        await alice.no_message("call_ended", 1.0)
        assert cid in a.app[HUB].calls
    finally:
        resynced = (a.app[CLUSTER].resyncs, b.app[CLUSTER].resyncs)
        redis.server.start()  # an empty Redis: the nodes write their state again
    await until(lambda: a.app[CLUSTER].healthy and b.app[CLUSTER].healthy, 10, "both nodes to recover")
    assert (await a.get("/healthz")).status == 200
    assert (await a.get("/readyz")).status == 200
    # each node has written its truth into the empty Redis again
    await until(lambda: a.app[CLUSTER].resyncs > resynced[0] and b.app[CLUSTER].resyncs > resynced[1],
                10, "both nodes to resync")
    # the call still works end to end: bob's hangup on b reaches its owner a
    await bob.send({"type": "hangup", "call_id": cid})
    assert (await alice.expect("call_ended", call_id=cid))["reason"] == "hangup"
    # and new calls work, busy state included (restored into the empty Redis)
    cid3 = await invite(carol, "bob")
    await bob.expect("invite", call_id=cid3)
    await bob.send({"type": "accept", "call_id": cid3, "sdp": ANSWER})
    await carol.expect("accept", call_id=cid3)
    cid4 = await invite(alice, "bob")
    assert (await alice.expect("call_ended", call_id=cid4))["reason"] == "busy"


@pytest.fixture(scope="module")
def pg(tmp_path_factory: pytest.TempPathFactory) -> Iterator[PostgresServer]:
    with postgres_server(tmp_path_factory.mktemp("pg")) as server:
        yield server


async def test_presence_crosses_nodes_on_postgres(nodes: Nodes, pg: PostgresServer) -> None:
    """On PostgreSQL each node holds people in a cache (jego_call/directory.py): a user who comes
    online on the other node is loaded there first, so their contacts on this node hear of it
    (the storm benchmark found them missed: a cache miss, and no presence)."""
    a, b = await nodes("a", "b", db={"url": pg.url})
    t = await users(b, "alice", "bob", "carol")       # written on b: a holds none of them yet
    alice = await Ws.open(a, t["alice"])
    bob = await Ws.open(b, t["bob"])
    await settle(a, b, users_online={"alice": 1, "bob": 1})
    got = [m for m in alice.seen if m["type"] == "presence" and m["username"] == "bob"]
    seen = got[-1] if got else await alice.expect("presence", username="bob", presence="online")
    assert seen["presence"] == "online"
    carol = await Ws.open(b, t["carol"])
    await alice.expect("presence", username="carol", presence="online")
    await bob.expect("presence", username="carol", presence="online")   # and on carol's own node
    await carol.close()
    await alice.expect("presence", username="carol", presence="offline")
    assert a.app[DIRECTORY].ready("bob") and a.app[DIRECTORY].ready("carol")
    assert a.app[DIRECTORY].misses == 0

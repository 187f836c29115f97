"""A 1:1 call's signalling over /ws in-process (tests/unit/appkit.py): invite reaches the callee
with who calls, ringing and accept reach the caller, hangup ends it for both with the reason and
who ended it; decline is "declined" or "busy" only; cancel while ringing; and the refusals, each
with its code and the call id: calling yourself, an unknown user, a call id in use, a message
about a call you are not in, a malformed call id or SDP. The socket stays usable after each.
"""

from __future__ import annotations

import asyncio
import json
import uuid
from typing import Any

import pytest
from aiohttp import WSMsgType

from tests.unit.appkit import Client, register

SDP = "v=0\r\no=- 1 1 IN IP4 127.0.0.1\r\ns=-\r\nt=0 0\r\nm=audio 9 UDP/TLS/RTP/SAVPF 111\r\n"


class Ws:
    """One signed-in socket: `send`, and `expect(type, **fields)` skipping other pushes."""

    def __init__(self, ws: Any) -> None:
        self.ws = ws
        self.seen: list[dict[str, Any]] = []

    @classmethod
    async def open(cls, client: Client, name: str) -> Ws:
        token = await register(client, name)
        w = cls(await client.ws_connect("/ws"))
        await w.send({"type": "auth", "token": token})
        await w.expect("auth_ok")
        return w

    async def send(self, msg: dict[str, Any]) -> None:
        await self.ws.send_str(json.dumps(msg))

    async def expect(self, kind: str, **fields: Any) -> dict[str, Any]:
        async with asyncio.timeout(5):
            while True:
                raw = await self.ws.receive()
                assert raw.type == WSMsgType.TEXT, raw
                msg: dict[str, Any] = json.loads(raw.data)
                self.seen.append(msg)
                if msg["type"] == kind and all(msg.get(k) == v for k, v in fields.items()):
                    return msg

    async def alive(self) -> None:
        await self.send({"type": "ping"})
        await self.expect("pong")

    async def close(self) -> None:
        await self.ws.close()


def cid() -> str:
    return uuid.uuid4().hex


async def pair(client: Client) -> tuple[Ws, Ws]:
    return await Ws.open(client, "alice"), await Ws.open(client, "bob")


async def test_invite_ringing_accept_hangup(client: Client) -> None:
    alice, bob = await pair(client)
    c = cid()
    await alice.send({"type": "invite", "call_id": c, "to": "bob", "media": ["audio"], "sdp": SDP})
    inv = await bob.expect("invite", call_id=c)
    assert inv["from"] == "alice" and inv["sdp"] == SDP and inv["media"] == ["audio"]
    await bob.send({"type": "ringing", "call_id": c})
    await alice.expect("ringing", call_id=c)
    await bob.send({"type": "accept", "call_id": c, "sdp": SDP})
    acc = await alice.expect("accept", call_id=c)
    assert acc["sdp"] == SDP
    await alice.send({"type": "hangup", "call_id": c})
    ended_b = await bob.expect("call_ended", call_id=c)
    ended_a = await alice.expect("call_ended", call_id=c)
    assert ended_a["reason"] == ended_b["reason"] == "hangup"
    # the call is gone: a second hangup is about an unknown call
    await alice.send({"type": "hangup", "call_id": c})
    err = await alice.expect("error")
    assert err["code"] == "unknown_call" and err["call_id"] == c
    await alice.close()
    await bob.close()


@pytest.mark.parametrize("reason", ["declined", "busy"])
async def test_decline_ends_the_call_with_its_reason(client: Client, reason: str) -> None:
    alice, bob = await pair(client)
    c = cid()
    await alice.send({"type": "invite", "call_id": c, "to": "bob", "sdp": SDP})
    await bob.expect("invite", call_id=c)
    await bob.send({"type": "decline", "call_id": c, "reason": reason})
    ended = await alice.expect("call_ended", call_id=c)
    assert ended["reason"] == reason
    await alice.close()
    await bob.close()


@pytest.mark.parametrize("reason", ["hangup", "nonsense", 5])
async def test_decline_takes_only_declined_or_busy(client: Client, reason: object) -> None:
    alice, bob = await pair(client)
    c = cid()
    await alice.send({"type": "invite", "call_id": c, "to": "bob", "sdp": SDP})
    await bob.expect("invite", call_id=c)
    await bob.send({"type": "decline", "call_id": c, "reason": reason})
    err = await bob.expect("error")
    assert err["code"] == "invalid_message" and "'declined' or 'busy'" in err["message"] and err["call_id"] == c
    await alice.send({"type": "cancel", "call_id": c})  # the call still rings: the caller can cancel
    assert (await bob.expect("call_ended", call_id=c))["reason"] == "cancelled"
    await alice.close()
    await bob.close()


async def test_calling_yourself_or_nobody_is_refused_with_the_call_id(client: Client) -> None:
    alice = await Ws.open(client, "alice")
    c1, c2 = cid(), cid()
    await alice.send({"type": "invite", "call_id": c1, "to": "alice", "sdp": SDP})
    err = await alice.expect("error")
    assert (err["code"], err["call_id"]) == ("self_call", c1)
    await alice.send({"type": "invite", "call_id": c2, "to": "ghost", "sdp": SDP})
    err = await alice.expect("error")
    assert (err["code"], err["call_id"]) == ("unknown_user", c2)
    await alice.alive()
    await alice.close()


async def test_a_call_id_in_use_is_call_exists(client: Client) -> None:
    alice, bob = await pair(client)
    await Ws.open(client, "carol")
    c = cid()
    await alice.send({"type": "invite", "call_id": c, "to": "bob", "sdp": SDP})
    await bob.expect("invite", call_id=c)
    await alice.send({"type": "invite", "call_id": c, "to": "carol", "sdp": SDP})
    err = await alice.expect("error")
    assert err["code"] == "call_exists" and err["call_id"] == c
    await alice.close()
    await bob.close()


async def test_a_stranger_cannot_touch_someone_elses_call(client: Client) -> None:
    alice, bob = await pair(client)
    eve = await Ws.open(client, "eve")
    c = cid()
    await alice.send({"type": "invite", "call_id": c, "to": "bob", "sdp": SDP})
    await bob.expect("invite", call_id=c)
    for kind in ("accept", "hangup", "cancel"):
        await eve.send({"type": kind, "call_id": c, "sdp": SDP} if kind == "accept" else {"type": kind, "call_id": c})
        err = await eve.expect("error")
        assert err["code"] == "not_party" and err["call_id"] == c, (kind, err)
    await bob.send({"type": "accept", "call_id": c, "sdp": SDP})  # the call was not disturbed
    await alice.expect("accept", call_id=c)
    await alice.close()
    await bob.close()
    await eve.close()


@pytest.mark.parametrize(("msg", "words"), [
    ({"type": "invite", "call_id": "short", "to": "bob", "sdp": SDP}, "call_id"),
    ({"type": "invite", "call_id": "x" * 65, "to": "bob", "sdp": SDP}, "call_id"),
    ({"type": "invite", "call_id": "bad id with spaces", "to": "bob", "sdp": SDP}, "call_id"),
    ({"type": "invite", "call_id": uuid.uuid4().hex, "to": "bob"}, "sdp"),
    ({"type": "invite", "call_id": uuid.uuid4().hex, "to": "bob", "sdp": 5}, "sdp"),
    ({"type": "invite", "call_id": uuid.uuid4().hex, "to": "bob", "sdp": SDP, "media": ["video"]}, "media"),
    ({"type": "invite", "call_id": uuid.uuid4().hex, "to": "bob", "sdp": SDP, "media": ["audio", "audio"]},
     "media"),
    ({"type": "invite", "call_id": uuid.uuid4().hex, "sdp": SDP}, "to"),
    ({"type": "hangup", "call_id": uuid.uuid4().hex, "sip_code": 99}, "sip_code"),
    ({"type": "hangup", "call_id": uuid.uuid4().hex, "q850_cause": 128}, "q850_cause"),
])
async def test_a_malformed_call_message_is_invalid_message_naming_the_field(client: Client, msg: dict[str, Any],
                                                                            words: str) -> None:
    alice = await Ws.open(client, "alice")
    await alice.send(msg)
    err = await alice.expect("error")
    assert err["code"] == "invalid_message" and words in err["message"], err
    await alice.alive()
    await alice.close()


async def test_the_callee_offline_is_unavailable(client: Client) -> None:
    alice = await Ws.open(client, "alice")
    await register(client, "bob")  # exists, no socket
    c = cid()
    await alice.send({"type": "invite", "call_id": c, "to": "bob", "sdp": SDP})
    got = await alice.expect("call_ended", call_id=c)
    assert got["reason"] == "unavailable", got
    await alice.close()


async def test_the_caller_leaving_ends_the_ringing_call_for_the_callee(client: Client) -> None:
    alice, bob = await pair(client)
    c = cid()
    await alice.send({"type": "invite", "call_id": c, "to": "bob", "sdp": SDP})
    await bob.expect("invite", call_id=c)
    await alice.close()
    ended = await bob.expect("call_ended", call_id=c)
    assert ended["reason"] == "connection_lost", ended
    await bob.alive()
    await bob.close()

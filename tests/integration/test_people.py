"""People over real sockets (issue 11): display names in the API, presence and invites; blocks
(calls and messages refused as "not available", presence hidden, history filtered); signed media
links; the dial pad's number check."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlsplit

import pytest
from aiohttp.test_utils import TestClient, TestServer

from jego_call.config import load_config
from jego_call.messaging import service as messaging_service
from jego_call.signalling.keys import ACCOUNTS, PRICE_LOOKUP
from jego_call.signalling.server import create_app

from .sigclient import FAKE_SDP, PASSWORD, AppClient, Ws, add_contact, new_call_id, register

# Each test on a client runs on SQLite and on PostgreSQL (tests/integration/conftest.py).
pytestmark = pytest.mark.backends("sqlite", "postgres")


def auth(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


async def call_json(client: AppClient, method: str, path: str, token: str | None = None,
                    body: Any = None) -> tuple[int, Any]:
    res = await client.request(method, path, json=body, headers=auth(token) if token else {})
    return res.status, (await res.json() if res.status != 204 else None)


async def test_display_names_at_registration_in_me_contacts_presence_and_invites(client: AppClient) -> None:
    res = await client.post("/api/register", json={"username": "wangfang", "password": PASSWORD,
                                                   "display_name": "  王芳  "})
    body = await res.json()
    assert res.status == 201 and body["display_name"] == "王芳", body
    tw = body["token"]
    tb = await register(client, "bob")
    assert (await call_json(client, "GET", "/api/me", tb))[1]["display_name"] == "bob"  # the username until set
    await add_contact(client, tb, "wangfang")
    status, contacts = await call_json(client, "GET", "/api/contacts", tb)
    assert contacts["contacts"] == [{"username": "wangfang", "display_name": "王芳", "presence": "offline"}]
    bob = await Ws.open(client, tb)
    wang = await Ws.open(client, tw)
    seen = await bob.expect("presence", username="wangfang", presence="online")
    assert seen["display_name"] == "王芳"
    # a new name in "Me" reaches the watchers at once
    status, me = await call_json(client, "PATCH", "/api/me", tw, {"display_name": "王芳 Fang"})
    assert status == 200 and me["display_name"] == "王芳 Fang" and me["username"] == "wangfang"
    assert (await bob.expect("presence", username="wangfang"))["display_name"] == "王芳 Fang"
    # the callee's invite names the caller
    cid = new_call_id()
    await wang.send({"type": "invite", "call_id": cid, "to": "bob", "media": ["audio"], "sdp": FAKE_SDP})
    invite = await bob.expect("invite", call_id=cid)
    assert (invite["from"], invite["display_name"]) == ("wangfang", "王芳 Fang")
    await wang.send({"type": "cancel", "call_id": cid})
    # someone who is not a contact can be looked up (for a request)
    status, person = await call_json(client, "GET", "/api/users/bob", tw)
    assert person == {"username": "bob", "display_name": "bob", "contact": False, "blocked": False}
    await bob.ws.close()
    await wang.ws.close()


@pytest.mark.parametrize(("name", "ok"), [
    ("王", True), ("x" * 32, True), ("👩‍👩‍👧 family", True), ("x" * 33, False), ("   ", False), ("", False),
    ("a\x07b", False), ("evil\u202etxt", False), (42, False),
])
async def test_display_name_rules(client: AppClient, name: object, ok: bool) -> None:
    token = await register(client, "alice")
    status, body = await call_json(client, "PATCH", "/api/me", token, {"display_name": name})
    if ok:
        assert status == 200, body
    else:
        assert (status, body["error"]["code"]) == (400, "invalid_display_name"), body
    res = await client.post("/api/register", json={"username": "carol", "password": PASSWORD, "display_name": name})
    assert (res.status == 201) is (ok or name == "")  # left blank at registration: the username


async def test_blocked_users_cannot_call_or_message_and_are_told_only_not_available(client: AppClient) -> None:
    ta, tb = await register(client, "alice"), await register(client, "bob")
    for t, other in ((ta, "bob"), (tb, "alice")):
        await add_contact(client, t, other)
    alice, bob = await Ws.open(client, ta), await Ws.open(client, tb)
    await alice.expect("presence", username="bob", presence="online")
    # bob blocks alice: she leaves his contacts, and sees him offline from now on
    status, body = await call_json(client, "POST", "/api/blocks", tb, {"username": "alice"})
    assert (status, body) == (201, {"username": "alice", "display_name": "alice"})
    assert (await call_json(client, "POST", "/api/blocks", tb, {"username": "alice"}))[0] == 200
    await alice.expect("presence", username="bob", presence="offline")
    assert (await call_json(client, "GET", "/api/contacts", ta))[1]["contacts"][0]["presence"] == "offline"
    status, contacts = await call_json(client, "GET", "/api/contacts", tb)
    assert contacts == {"contacts": [], "blocked": [{"username": "alice", "display_name": "alice"}]}
    # her call ends as if he were offline, and never rings him
    cid = new_call_id()
    await alice.send({"type": "invite", "call_id": cid, "to": "bob", "media": ["audio"], "sdp": FAKE_SDP})
    ended = await alice.expect("call_ended", call_id=cid)
    assert ended["reason"] == "unavailable"
    await bob.no_message("invite")
    # her message is refused with the same words, and is not stored
    await alice.send({"type": "send_message", "id": "m1xxxxxx", "client_id": "m1xxxxxx", "to": "bob", "text": "hi"})
    err = await alice.expect("error")
    assert (err["code"], err["message"], err["ref"]) == ("unavailable", "not available", "m1xxxxxx")
    assert (await call_json(client, "GET", "/api/conversations", tb))[1]["conversations"] == []
    # the blocked call is not in bob's history; alice sees hers
    assert (await call_json(client, "GET", "/api/calls", tb))[1]["calls"] == []
    assert [c["outcome"] for c in (await call_json(client, "GET", "/api/calls", ta))[1]["calls"]] == ["unavailable"]
    # he can still call her; unblocking lifts it (and she sees him online again)
    assert (await call_json(client, "DELETE", "/api/blocks/alice", tb))[0] == 204
    assert (await call_json(client, "DELETE", "/api/blocks/alice", tb))[1]["error"]["code"] == "not_found"
    await alice.expect("presence", username="bob", presence="online")
    cid = new_call_id()
    await alice.send({"type": "invite", "call_id": cid, "to": "bob", "media": ["audio"], "sdp": FAKE_SDP})
    await bob.expect("invite", call_id=cid)
    await alice.send({"type": "cancel", "call_id": cid})
    # adding a blocked user back unblocks them
    await call_json(client, "POST", "/api/blocks", tb, {"username": "alice"})
    assert (await call_json(client, "POST", "/api/contacts", tb, {"username": "alice"}))[0] == 201
    assert (await call_json(client, "GET", "/api/blocks", tb))[1] == {"blocked": []}
    assert (await call_json(client, "POST", "/api/blocks", tb, {"username": "bob"}))[1]["error"]["code"] == "self_contact"
    assert (await call_json(client, "POST", "/api/blocks", tb, {"username": "nobody"}))[1]["error"]["code"] == "unknown_user"
    await alice.ws.close()
    await bob.ws.close()


async def test_signed_media_links_are_bound_to_user_media_variant_and_time(client: AppClient) -> None:
    ta, tb = await register(client, "alice"), await register(client, "bob")
    tc = await register(client, "carol")
    res = await client.post("/api/media", data=b"just some bytes" * 100, params={"filename": "notes.txt"},
                            headers=auth(ta))
    media = await res.json()
    status, link = await call_json(client, "GET", f"/api/media/{media['id']}/link", ta)
    assert status == 200 and link["thumbnail_url"] is None
    assert link["expires_at"] - time.time() == pytest.approx(messaging_service.MEDIA_URL_TTL_S, abs=5)
    res = await client.get(link["url"])
    assert res.status == 200 and await res.read() == b"just some bytes" * 100
    q = parse_qs(urlsplit(link["url"]).query)
    base = f"/api/media/{media['id']}"
    bad = [
        f"{base}?u=bob&exp={q['exp'][0]}&sig={q['sig'][0]}",               # someone else's name
        f"{base}?u=alice&exp={int(q['exp'][0]) + 1}&sig={q['sig'][0]}",    # a longer life
        f"{base}/thumbnail?u=alice&exp={q['exp'][0]}&sig={q['sig'][0]}",   # another variant
        f"{base}?u=alice&exp=soon&sig={q['sig'][0]}",
    ]
    for url in bad:
        res = await client.get(url)
        assert res.status == 401, url
    expired = messaging_service.signed_media_url(client.app[ACCOUNTS], "alice",
                                                 media["id"], "full", int(time.time()) - 1)
    res = await client.get(expired)
    assert res.status == 401 and "expired" in (await res.json())["error"]["message"]
    # a valid link does not widen who may read: carol is no member of any conversation with it
    status, _ = await call_json(client, "GET", f"/api/media/{media['id']}/link", tc)
    assert status == 403
    del tb


@pytest.mark.parametrize(("typed", "formatted", "kind", "callable_", "reason"), [
    ("13800138000", "138 0013 8000", "mobile", True, None),
    ("+8613900000486", "+86 139 0000 0486", "mobile", True, None),
    ("010 65529988", "010 6552 9988", "fixed", True, None),
    ("110", "110", "emergency", False, "emergency"),
    ("12345", "12345", "short", False, "service_number"),
    ("+49 30 12345678", "+49 30 12345678", "foreign", False, "rejected"),
    ("138", "138", "incomplete", False, "invalid_number"),
    ("abc", "abc", "invalid", False, "invalid_number"),
])
async def test_number_check(client: AppClient, typed: str, formatted: str, kind: str, callable_: bool,
                            reason: str | None) -> None:
    token = await register(client, "alice")
    res = await client.get("/api/numbers/check", params={"number": typed}, headers=auth(token))
    body = await res.json()
    assert res.status == 200, body
    assert (body["formatted"], body["kind"], body["callable"], body["reason"]) == (formatted, kind, callable_, reason)
    if callable_:  # billing installs its PRICE_LOOKUP: the same price as GET /api/rate
        rate = await (await client.get("/api/rate", params={"number": typed}, headers=auth(token))).json()
        assert body["price"]["per_minute"] + " CNY" == rate["rate"]["per_minute_text"]
        assert body["price"]["currency"] == "CNY" and body["price"]["increment"] == rate["rate"]["increment"]
        assert body["price"]["destination"] == rate["rate"]["destination"]
    else:
        assert body["price"] is None
    if reason is not None:
        assert body["words"]["en"] and body["words"]["zh"] and body["words"]["en"] != body["words"]["zh"]
    res = await client.get("/api/numbers/check", params={"number": typed})
    assert res.status == 401


async def test_number_check_price_hook(tmp_path: Path) -> None:
    """The hook billing fills: GET /api/numbers/check adds its price for numbers that can be called."""
    cfg = load_config(None, environ={}, overrides={"data": {"dir": str(tmp_path / "d")}})
    app = create_app(cfg)
    app[PRICE_LOOKUP] = lambda e164: {"per_minute": "0.10", "currency": "CNY", "e164": e164}
    client = TestClient(TestServer(app, host="127.0.0.1"))
    await client.start_server()
    try:
        await _priced(client)
    finally:
        await client.close()


async def _priced(client: AppClient) -> None:
    token = await register(client, "alice")
    res = await client.get("/api/numbers/check", params={"number": "13800138000"}, headers=auth(token))
    assert (await res.json())["price"] == {"per_minute": "0.10", "currency": "CNY", "e164": "+8613800138000"}
    res = await client.get("/api/numbers/check", params={"number": "110"}, headers=auth(token))
    assert (await res.json())["price"] is None

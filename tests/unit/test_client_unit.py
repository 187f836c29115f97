"""jego_call/client.py's `JegoClient` against a small scripted server on 127.0.0.1 (aiohttp's
TestServer): how each kind of HTTP answer becomes a result or an error (ApiError with the
server's code and status, ServerUnreachable for no server or a server that is not ours), the
WebSocket's auth (refused: ApiError; accepted: ICE servers and policy kept), incoming invites
rung automatically, `send_message` waiting for its own ack while other messages keep their
order for `recv()`, and the end of the connection (ConnectionLost, also for a send).
"""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Any

import pytest
from aiohttp import WSMsgType, web
from aiohttp.test_utils import TestServer

from jego_call.client import ApiError, ConnectionLost, JegoClient, ServerUnreachable, new_call_id


@dataclass
class Script:
    """What the stub server heard."""

    headers: list[str] = field(default_factory=list)
    ws_in: list[dict[str, Any]] = field(default_factory=list)


async def stub_server(script: Script) -> web.Application:
    async def login(request: web.Request) -> web.Response:
        body = await request.json()
        if body["password"] != "right":
            return web.json_response({"error": {"code": "auth_failed", "message": "wrong username or password"}},
                                     status=401)
        return web.json_response({"token": "tok-" + body["username"], "username": body["username"]})

    async def me(request: web.Request) -> web.Response:
        script.headers.append(request.headers.get("Authorization", ""))
        return web.json_response({"username": "alice"})

    async def empty(request: web.Request) -> web.Response:
        return web.Response(status=204)

    async def list_error(request: web.Request) -> web.Response:
        return web.json_response(["not", "an", "object"], status=404)

    async def html(request: web.Request) -> web.Response:
        return web.Response(text="<html>a router login page</html>", content_type="text/html")

    async def ws(request: web.Request) -> web.WebSocketResponse:
        sock = web.WebSocketResponse()
        await sock.prepare(request)
        auth = json.loads((await sock.receive()).data)
        if auth.get("token") == "tok-refused":
            await sock.send_json({"type": "error", "code": "auth_failed", "message": "token expired: log in again"})
            await sock.close()
            return sock
        await sock.send_json({"type": "auth_ok", "session": "s1", "username": "alice",
                              "ice_servers": [{"urls": "turn:127.0.0.1:3478"}], "ice_transport_policy": "relay"})
        async for msg in sock:
            if msg.type != WSMsgType.TEXT:
                break
            data = json.loads(msg.data)
            script.ws_in.append(data)
            kind = data.get("type")
            if kind == "send_message" and data.get("to") == "bob":
                await sock.send_json({"type": "invite", "call_id": "call-AAAA1111", "from": "carol"})
                await sock.send_str("not json at all")                  # ignored by the client
                await sock.send_json({"type": "presence", "username": "dave"})
                await sock.send_json({"type": "message_ack", "client_id": "other-id"})   # not ours
                await sock.send_json({"type": "message_ack", "client_id": data["client_id"], "message": {"seq": 7}})
                await sock.send_json({"type": "presence", "username": "erin"})
            elif kind == "send_message":
                await sock.send_json({"type": "error", "code": "not_contact", "message": "add them first",
                                      "ref": data["client_id"]})
            elif kind == "bye":
                await sock.close()
        return sock

    app = web.Application()
    app.router.add_post("/api/login", login)
    app.router.add_get("/api/me", me)
    app.router.add_get("/api/empty", empty)
    app.router.add_get("/api/list-error", list_error)
    app.router.add_get("/api/html", html)
    app.router.add_get("/ws", ws)
    return app


@pytest.fixture
def script() -> Script:
    return Script()


@pytest.fixture
async def url(script: Script) -> AsyncIterator[str]:
    server = TestServer(await stub_server(script), host="127.0.0.1")
    await server.start_server()
    yield str(server.make_url("")).rstrip("/")
    await server.close()


# --- HTTP ---------------------------------------------------------------------------------------
async def test_login_keeps_the_token_and_sends_it(url: str, script: Script) -> None:
    async with JegoClient(url + "/") as c:
        assert c.url == url
        await c.login("alice", "right")
        assert (c.token, c.username) == ("tok-alice", "alice")
        assert await c.me() == {"username": "alice"}
    assert script.headers == ["Bearer tok-alice"]


async def test_a_refusal_is_an_api_error_with_code_message_and_status(url: str) -> None:
    async with JegoClient(url) as c:
        with pytest.raises(ApiError) as e:
            await c.login("alice", "wrong")
        assert (e.value.code, e.value.message, e.value.status) == ("auth_failed", "wrong username or password", 401)
        assert c.token is None
        with pytest.raises(ApiError) as e:
            await c.request("GET", "/api/list-error")
        assert (e.value.code, e.value.status) == ("http_404", 404)
        with pytest.raises(ServerUnreachable, match="did not answer like a Jego Call server"):
            await c.request("GET", "/api/nowhere")          # a plain-text 404: not a Jego Call server


async def test_no_content_is_none(url: str) -> None:
    async with JegoClient(url) as c:
        assert await c.request("GET", "/api/empty") is None


async def test_a_server_that_is_not_ours_is_unreachable_not_a_crash(url: str) -> None:
    async with JegoClient(url) as c:
        with pytest.raises(ServerUnreachable, match="did not answer like a Jego Call server"):
            await c.request("GET", "/api/html")


async def test_no_server_is_unreachable_with_the_reason() -> None:
    async with JegoClient("http://127.0.0.1:9", timeout=5) as c:
        with pytest.raises(ServerUnreachable, match=r"cannot reach http://127\.0\.0\.1:9: \S"):
            await c.login("alice", "right")
        c.token = "t"
        with pytest.raises(ServerUnreachable, match="cannot open ws://127.0.0.1:9/ws"):
            await c.connect()


def test_the_websocket_url_follows_the_scheme() -> None:
    assert JegoClient("http://127.0.0.1:8080/").ws_url == "ws://127.0.0.1:8080/ws"
    assert JegoClient("https://jego.example").ws_url == "wss://jego.example/ws"


def test_a_new_call_id_fits_the_protocol() -> None:
    ids = {new_call_id() for _ in range(100)}
    assert len(ids) == 100 and all(len(i) == 32 and i.isalnum() for i in ids)


# --- the WebSocket -------------------------------------------------------------------------------
async def read_to_the_end(c: JegoClient) -> None:
    """recv() until the connection's end (ConnectionLost)."""
    while True:
        await c.recv(5)


async def test_connect_needs_a_token_first(url: str) -> None:
    async with JegoClient(url) as c:
        with pytest.raises(ApiError) as e:
            await c.connect()
        assert e.value.code == "not_authenticated"


async def test_a_refused_auth_is_an_api_error(url: str) -> None:
    async with JegoClient(url) as c:
        await c.login("refused", "right")
        with pytest.raises(ApiError) as e:
            await c.connect()
        assert (e.value.code, e.value.message) == ("auth_failed", "token expired: log in again")


async def test_auth_ok_gives_the_session_and_its_ice_servers(url: str) -> None:
    async with JegoClient(url) as c:
        await c.login("alice", "right")
        ok = await c.connect()
        assert ok["type"] == "auth_ok" and c.session_id == "s1"
        assert c.ice_servers == [{"urls": "turn:127.0.0.1:3478"}] and c.ice_transport_policy == "relay"


async def test_send_message_waits_for_its_ack_and_others_keep_their_order(url: str, script: Script) -> None:
    async with JegoClient(url, timeout=5) as c:
        await c.login("alice", "right")
        await c.connect()
        ack = await c.send_message("bob", text="你好", client_id="cid-1")
        assert ack == {"type": "message_ack", "client_id": "cid-1", "message": {"seq": 7}}
        got = [await c.recv(5) for _ in range(4)]
        assert [(m or {}).get("type") for m in got] == ["invite", "presence", "message_ack", "presence"]
        assert [(m or {}).get("username") for m in got if (m or {}).get("type") == "presence"] == ["dave", "erin"]
        sent = script.ws_in[0]
        assert sent == {"type": "send_message", "id": "cid-1", "client_id": "cid-1", "to": "bob", "text": "你好"}


async def test_an_invite_is_rung_at_once(url: str, script: Script) -> None:
    async with JegoClient(url, timeout=5) as c:
        await c.login("alice", "right")
        await c.connect()
        await c.send_message("bob", text="x")
        await c.wait_for("presence", timeout=5)
        await c.send({"type": "ping"})          # a marker: everything before it reached the server
        await c.send({"type": "bye"})
        with pytest.raises(ConnectionLost):
            await read_to_the_end(c)
    assert {"type": "ringing", "call_id": "call-AAAA1111"} in script.ws_in


async def test_a_refused_message_is_an_api_error_with_the_servers_code(url: str) -> None:
    async with JegoClient(url, timeout=5) as c:
        await c.login("alice", "right")
        await c.connect()
        with pytest.raises(ApiError) as e:
            await c.send_message("stranger", text="hi")
        assert (e.value.code, e.value.message) == ("not_contact", "add them first")


async def test_when_the_server_closes_recv_and_send_say_so(url: str) -> None:
    async with JegoClient(url, timeout=5) as c:
        await c.login("alice", "right")
        await c.connect()
        await c.send({"type": "bye"})
        with pytest.raises(ConnectionLost, match="closed by the server"):
            await read_to_the_end(c)
        with pytest.raises(ConnectionLost, match="is closed"):
            await c.recv(1)
        with pytest.raises(ConnectionLost):
            await c.send({"type": "ping"})
    assert await JegoClient(url).recv(0.01) is None       # never connected: nothing within the timeout

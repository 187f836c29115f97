"""JegoClient with several nodes (`urls`): after a drop, `reconnect()` resumes with the kept token
on the next node of the list, round-robin, skipping nodes that refuse connections; HTTP calls
follow the node in use. The nodes are small scripted servers on 127.0.0.1 (aiohttp's
TestServer) that record every auth they hear; dead nodes are closed 127.0.0.1 ports."""

from __future__ import annotations

import asyncio
import json
import random
from collections.abc import AsyncIterator
from dataclasses import dataclass, field

import pytest
from aiohttp import WSMsgType, web
from aiohttp.test_utils import TestServer

from jego_call.client import ApiError, Backoff, JegoClient, ServerUnreachable
from tests.servers import free_port


@dataclass
class Node:
    """One scripted node: its name, the tokens its /ws and /api/me heard, its open sockets."""

    name: str
    refuse: bool = False                      # every token is refused (auth_failed), as a node with another key
    busy: int = 0                             # the next this many auths get service_unavailable (Redis away)
    auths: list[str] = field(default_factory=list)
    bearers: list[str] = field(default_factory=list)
    sockets: list[web.WebSocketResponse] = field(default_factory=list)
    server: TestServer | None = None

    @property
    def url(self) -> str:
        assert self.server is not None
        return str(self.server.make_url("")).rstrip("/")

    async def drop_all(self) -> None:
        """Close every signalling socket, as a node going away does."""
        for sock in self.sockets:
            await sock.close()
        self.sockets.clear()


def node_app(node: Node) -> web.Application:
    async def ws(request: web.Request) -> web.WebSocketResponse:
        sock = web.WebSocketResponse()
        await sock.prepare(request)
        token = json.loads((await sock.receive()).data)["token"]
        node.auths.append(token)
        if node.refuse:
            await sock.send_json({"type": "error", "code": "auth_failed", "message": "token expired: log in again"})
            await sock.close()
            return sock
        if node.busy:
            node.busy -= 1
            await sock.send_json({"type": "error", "code": "service_unavailable", "message": "shared state unreachable"})
            await sock.close()
            return sock
        await sock.send_json({"type": "auth_ok", "session": f"{node.name}-{len(node.auths)}", "username": "alice"})
        node.sockets.append(sock)
        async for msg in sock:
            if msg.type != WSMsgType.TEXT:
                break
        return sock

    async def me(request: web.Request) -> web.Response:
        node.bearers.append(request.headers.get("Authorization", ""))
        return web.json_response({"username": "alice", "node": node.name})

    app = web.Application()
    app.router.add_get("/ws", ws)
    app.router.add_get("/api/me", me)
    return app


@pytest.fixture
async def nodes() -> AsyncIterator[dict[str, Node]]:
    made = {n: Node(n, refuse=(n == "refusing")) for n in ("a", "b", "c", "refusing")}
    for node in made.values():
        node.server = TestServer(node_app(node), host="127.0.0.1")
        await node.server.start_server()
    yield made
    for node in made.values():
        assert node.server is not None
        await node.server.close()


def dead_url() -> str:
    return f"http://127.0.0.1:{free_port()}"  # nothing listens: connections are refused


class Recorder:
    """An injected sleep: the delays asked for and where `url` pointed then (virtual time)."""

    def __init__(self, client: JegoClient) -> None:
        self.client = client
        self.waits: list[tuple[float, str]] = []

    async def __call__(self, delay: float) -> None:
        self.waits.append((delay, self.client.url))

    @property
    def tried(self) -> list[str]:
        return [u for _, u in self.waits]


def test_urls_keep_their_order_and_url_says_where_to_start() -> None:
    a, b, c = "http://127.0.0.1:1", "http://127.0.0.1:2", "http://127.0.0.1:3"
    first = JegoClient(urls=[a + "/", b, a])
    assert first.url == a and first.urls == [a, b]                 # trailing slash and duplicate gone
    assert [first.next_url(), first.next_url(), first.next_url()] == [b, a, b]
    on_b = JegoClient(b, urls=[a, b, c])
    assert on_b.urls == [a, b, c] and on_b.url == b and on_b.next_url() == c and on_b.next_url() == a
    outside = JegoClient(c, urls=[a, b])
    assert outside.urls == [c, a, b] and outside.next_url() == a
    single = JegoClient(a)
    assert single.urls == [a] and single.next_url() == a and single.url == a
    with pytest.raises(ValueError, match="url"):
        JegoClient()


async def test_a_dropped_client_resumes_on_the_next_node_with_its_token(nodes: dict[str, Node]) -> None:
    a, b = nodes["a"], nodes["b"]
    async with JegoClient(urls=[a.url, b.url], timeout=5.0) as c:
        c.token = "tok-alice"
        assert (await c.connect())["session"] == "a-1" and c.url == a.url
        await a.drop_all()                                         # node a goes away (it still listens)
        await asyncio.wait_for(c.wait_closed(), 5)
        sleep = Recorder(c)
        hello = await c.reconnect(Backoff(random.Random(2), base_s=1.0, cap_s=8.0), max_attempts=3, sleep=sleep)
        assert hello["session"] == "b-1" and c.url == b.url        # on the other node, not back on a
        assert b.auths == ["tok-alice"] and a.auths == ["tok-alice"]   # the kept token; nothing more on a
        assert c.reconnect_attempts == 1 and sleep.tried == [b.url]
        assert sleep.waits[0][0] == Backoff(random.Random(2), base_s=1.0, cap_s=8.0).next_delay()
        assert (await c.me())["node"] == "b" and b.bearers == ["Bearer tok-alice"]   # HTTP follows the node
        await b.drop_all()                                         # and from b, round-robin back to a
        await asyncio.wait_for(c.wait_closed(), 5)
        assert (await c.reconnect(sleep=Recorder(c), max_attempts=3))["session"] == "a-2" and c.url == a.url


async def test_refusing_nodes_are_skipped_round_robin_until_one_answers(nodes: dict[str, Node]) -> None:
    a, b = nodes["a"], nodes["b"]
    dead1, dead2 = dead_url(), dead_url()
    async with JegoClient(urls=[a.url, dead1, dead2, b.url], timeout=5.0) as c:
        c.token = "tok-alice"
        await c.connect()
        await a.drop_all()
        await asyncio.wait_for(c.wait_closed(), 5)
        sleep = Recorder(c)
        hello = await c.reconnect(Backoff(random.Random(9), base_s=0.5, cap_s=4.0), max_attempts=6, sleep=sleep)
        assert hello["session"] == "b-1" and c.url == b.url
        assert sleep.tried == [dead1, dead2, b.url] and c.reconnect_attempts == 3
        want = Backoff(random.Random(9), base_s=0.5, cap_s=4.0)
        assert [d for d, _ in sleep.waits] == [want.next_delay() for _ in range(3)]   # one wait per attempt


async def test_a_client_whose_first_node_is_down_starts_on_the_next(nodes: dict[str, Node]) -> None:
    b = nodes["b"]
    dead = dead_url()
    async with JegoClient(urls=[dead, b.url], timeout=5.0) as c:
        c.token = "tok-alice"
        with pytest.raises(ServerUnreachable, match="cannot open"):
            await c.connect()                                      # connect() tries `url` only
        hello = await c.reconnect(sleep=Recorder(c), max_attempts=3)
        assert hello["session"] == "b-1" and c.reconnect_attempts == 1 and c.url == b.url


async def test_every_node_down_cycles_through_all_then_gives_up() -> None:
    urls = [dead_url(), dead_url(), dead_url()]
    async with JegoClient(urls=urls, timeout=2.0) as c:
        c.token = "tok-alice"
        sleep = Recorder(c)
        with pytest.raises(ServerUnreachable, match="after 5 attempts") as err:
            await c.reconnect(Backoff(random.Random(4), base_s=1.0, cap_s=4.0), max_attempts=5, sleep=sleep)
    assert sleep.tried == [urls[1], urls[2], urls[0], urls[1], urls[2]]
    assert all(u in str(err.value) for u in urls)
    assert all(0 <= d <= cap for (d, _), cap in zip(sleep.waits, [1.0, 2.0, 4.0, 4.0, 4.0], strict=True))


async def test_a_token_refused_by_the_next_node_is_raised_at_once(nodes: dict[str, Node]) -> None:
    a, refusing, b = nodes["a"], nodes["refusing"], nodes["b"]
    async with JegoClient(urls=[a.url, refusing.url, b.url], timeout=5.0) as c:
        c.token = "tok-alice"
        await c.connect()
        await a.drop_all()
        await asyncio.wait_for(c.wait_closed(), 5)
        sleep = Recorder(c)
        with pytest.raises(ApiError) as err:
            await c.reconnect(sleep=sleep, max_attempts=3)
        assert err.value.code == "auth_failed"                     # only login() helps: not tried elsewhere
        assert sleep.tried == [refusing.url] and b.auths == [] and refusing.auths == ["tok-alice"]


async def test_a_node_that_is_unavailable_for_a_moment_is_tried_again(nodes: dict[str, Node]) -> None:
    """service_unavailable (its Redis or database away for a moment) is not the token's fault:
    reconnect() goes on with the next node, and comes back to this one, instead of giving up."""
    a, b = nodes["a"], nodes["b"]
    b.busy = 2
    async with JegoClient(urls=[a.url, b.url], timeout=5.0) as c:
        c.token = "tok-alice"
        await c.connect()
        a_url = a.url
        await a.drop_all()
        await a.server.close()  # type: ignore[union-attr]   # node a is gone for good
        await asyncio.wait_for(c.wait_closed(), 5)
        sleep = Recorder(c)
        hello = await c.reconnect(sleep=sleep, max_attempts=8)
        assert hello["session"] == "b-3" and c.url == b.url
        assert b.auths == ["tok-alice"] * 3 and sleep.tried == [b.url, a_url, b.url, a_url, b.url]
        assert c.reconnect_attempts == 5
        await b.drop_all()
        await asyncio.wait_for(c.wait_closed(), 5)
        b.busy = 5
        with pytest.raises(ApiError) as err:   # still unavailable after max_attempts: the last error
            await c.reconnect(sleep=Recorder(c), max_attempts=2)
        assert err.value.code == "service_unavailable"

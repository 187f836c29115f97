"""jego_call/signalling/ws.py, the /ws protocol, driven in-process (`create_app` on 127.0.0.1 with
aiohttp's TestServer, SQLite in tmp_path): authentication by token (and by the gateway secret),
every bad frame answered with its error code and words (echoing the client's `id` as `ref`) and
the socket still serving, binary frames and oversized frames closed with their close codes, the
auth deadline, the per-connection rate limit, ping/pong; the TokenBucket's bound (hypothesis);
the TURN credential refresh at half-life on an injected clock.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import Callable
from dataclasses import dataclass, field
from types import SimpleNamespace
from typing import Any, cast

import pytest
from aiohttp import WSMsgType, web
from hypothesis import given
from hypothesis import strategies as st

from jego_call.config import load_config
from jego_call.signalling import ws as ws_mod
from jego_call.signalling.keys import HUB
from jego_call.signalling.messages import MAX_NESTING, PROTOCOL_VERSION
from jego_call.signalling.ws import CLOSE_AUTH_TIMEOUT, CLOSE_UNSUPPORTED, TokenBucket, WsSession
from tests.helpers import until
from tests.unit.appkit import GATEWAY_SECRET, Client, MakeClient, register


async def recv(ws: Any) -> dict[str, Any]:
    """The next JSON frame (skipping nothing: the protocol sends only what was asked or pushed)."""
    msg = await asyncio.wait_for(ws.receive(), 5.0)
    assert msg.type == WSMsgType.TEXT, (msg.type, msg.data, msg.extra)
    out: dict[str, Any] = json.loads(msg.data)
    return out


async def recv_type(ws: Any, kind: str) -> dict[str, Any]:
    """The next frame of type `kind`, skipping pushes (presence and the like) in between."""
    for _ in range(20):
        got = await recv(ws)
        if got["type"] == kind:
            return got
    raise AssertionError(f"no {kind!r} frame")


async def authed(client: Client, name: str) -> tuple[Any, dict[str, Any]]:
    token = await register(client, name)
    ws = await client.ws_connect("/ws")
    await ws.send_json({"type": "auth", "token": token})
    return ws, await recv_type(ws, "auth_ok")


# --- authentication ----------------------------------------------------------------------------------

async def test_auth_with_a_token_says_who_and_which_protocol(client: Client) -> None:
    ws, ok = await authed(client, "alice")
    assert ok["username"] == "alice" and ok["protocol"] == PROTOCOL_VERSION
    assert isinstance(ok["session"], str) and ok["session"]
    assert ok["ice_servers"] == [] and "ice_expires_at" not in ok  # no TURN configured: nothing expires
    assert client.app[HUB].presence("alice") == "online"
    await ws.close()


async def test_everything_before_auth_is_refused_as_not_authenticated(client: Client) -> None:
    ws = await client.ws_connect("/ws")
    await ws.send_json({"type": "invite", "id": 7, "call_id": "c" * 16, "to": "bob", "sdp": "v=0"})
    err = await recv(ws)
    assert err["type"] == "error" and err["code"] == "not_authenticated" and err["ref"] == 7
    assert "auth" in err["message"]
    await ws.send_json({"type": "ping"})  # ping needs no auth
    assert await recv(ws) == {"type": "pong"}
    await ws.close()


async def test_a_wrong_token_is_auth_failed_and_the_socket_may_try_again(client: Client) -> None:
    token = await register(client, "alice")
    ws = await client.ws_connect("/ws")
    await ws.send_json({"type": "auth", "token": token[:-2] + "xx", "id": "a1"})
    err = await recv(ws)
    assert (err["code"], err["ref"]) == ("auth_failed", "a1")
    assert client.app[HUB].presence("alice") == "offline"
    await ws.send_json({"type": "auth", "token": token})
    assert (await recv_type(ws, "auth_ok"))["username"] == "alice"
    await ws.close()


async def test_a_second_auth_on_the_same_socket_is_already_authenticated(client: Client) -> None:
    ws, _ = await authed(client, "alice")
    token = await register(client, "bob")
    await ws.send_json({"type": "auth", "token": token})
    err = await recv_type(ws, "error")
    assert err["code"] == "already_authenticated"
    await ws.send_json({"type": "gateway_auth", "secret": GATEWAY_SECRET, "name": "gw", "capacity": 1})
    assert (await recv_type(ws, "error"))["code"] == "already_authenticated"
    assert client.app[HUB].presence("bob") == "offline"  # still alice's socket
    await ws.close()


async def test_gateway_auth_takes_the_secret_and_refuses_a_wrong_one(client: Client) -> None:
    ws = await client.ws_connect("/ws")
    await ws.send_json({"type": "gateway_auth", "secret": "nope", "name": "gw1", "capacity": 4})
    err = await recv(ws)
    assert err["code"] == "auth_failed" and "secret" in err["message"]
    await ws.send_json({"type": "gateway_auth", "secret": GATEWAY_SECRET, "name": "gw1", "capacity": 4})
    ok = await recv_type(ws, "auth_ok")
    assert ok["role"] == "gateway" and ok["protocol"] == PROTOCOL_VERSION and "username" not in ok
    await ws.close()


@pytest.mark.parametrize("capacity", [0, 1001, "4", None])
async def test_gateway_auth_with_a_bad_capacity_is_invalid_message(client: Client, capacity: object) -> None:
    ws = await client.ws_connect("/ws")
    await ws.send_json({"type": "gateway_auth", "secret": GATEWAY_SECRET, "name": "gw1", "capacity": capacity})
    assert (await recv(ws))["code"] == "invalid_message"
    await ws.close()


def catch_auth_deadline(monkeypatch: pytest.MonkeyPatch) -> list[tuple[float, Callable[[], None]]]:
    """Let the running loop's timers through, but keep the /ws auth deadline's (delay, callback) to
    run by hand: the deadline passes when the test says so, not after a sleep."""
    loop = asyncio.get_running_loop()
    real = loop.call_later
    caught: list[tuple[float, Callable[[], None]]] = []

    def call_later(delay: float, cb: Callable[..., None], *args: Any, **kw: Any) -> asyncio.TimerHandle:
        if getattr(cb, "__name__", "") == "auth_deadline":
            caught.append((delay, cb))
        return real(delay, cb, *args, **kw)

    monkeypatch.setattr(loop, "call_later", call_later)
    return caught


async def test_no_auth_within_the_deadline_closes_with_4001(make_client: MakeClient,
                                                            monkeypatch: pytest.MonkeyPatch) -> None:
    caught = catch_auth_deadline(monkeypatch)
    client = await make_client(signalling={"auth_timeout_s": 7.5})
    ws = await client.ws_connect("/ws")
    await ws.send_json({"type": "ping"})
    assert await recv(ws) == {"type": "pong"}  # a ping is not an auth
    ((delay, deadline),) = caught
    assert delay == 7.5
    deadline()
    msg = await asyncio.wait_for(ws.receive(), 5.0)
    assert msg.type == WSMsgType.CLOSE and msg.data == CLOSE_AUTH_TIMEOUT
    assert msg.extra == "authenticate first"


async def test_auth_in_time_disarms_the_deadline(make_client: MakeClient,
                                                 monkeypatch: pytest.MonkeyPatch) -> None:
    caught = catch_auth_deadline(monkeypatch)
    client = await make_client()
    ws, _ = await authed(client, "alice")
    ((_, deadline),) = caught
    deadline()  # had the timer not been cancelled, this is what it would do
    await ws.send_json({"type": "ping"})
    assert await recv(ws) == {"type": "pong"}
    assert not ws.closed and client.app[HUB].presence("alice") == "online"
    await ws.close()


# --- bad frames ----------------------------------------------------------------------------------------

@pytest.mark.parametrize(("frame", "code", "words"), [
    ("{not json", "invalid_json", "not valid JSON"),
    ("[1, 2]", "invalid_json", "JSON object"),
    ('"ping"', "invalid_json", "JSON object"),
    ("{}", "invalid_message", "'type'"),
    ('{"type": 5}', "invalid_message", "'type'"),
    ('{"type": "teleport"}', "unknown_type", "teleport"),
    ('{"type": "auth"}', "invalid_message", "token"),
    ('{"type": "auth", "token": 12}', "invalid_message", "token"),
])
async def test_a_bad_frame_gets_its_code_with_words_and_the_socket_keeps_serving(
        client: Client, frame: str, code: str, words: str) -> None:
    ws = await client.ws_connect("/ws")
    await ws.send_str(frame)
    err = await recv(ws)
    assert err["type"] == "error" and err["code"] == code, err
    assert words in err["message"], err
    await ws.send_json({"type": "ping"})
    assert await recv(ws) == {"type": "pong"}
    await ws.close()


async def test_an_unknown_type_names_it_cut_to_40_characters(client: Client) -> None:
    ws = await client.ws_connect("/ws")
    await ws.send_json({"type": "x" * 300, "id": "r"})
    err = await recv(ws)
    assert err["code"] == "unknown_type" and err["ref"] == "r"
    assert "x" * 40 in err["message"] and "x" * 41 not in err["message"]
    await ws.close()


@pytest.mark.parametrize(("ref", "echoed"), [(3, True), ("abc", True), ("r" * 64, True), ("r" * 65, False),
                                             (True, False), (1.5, False), ([1], False), (None, False)])
async def test_the_error_echoes_only_a_sane_id(client: Client, ref: object, echoed: bool) -> None:
    ws = await client.ws_connect("/ws")
    await ws.send_json({"type": "nope", "id": ref})
    err = await recv(ws)
    assert err["code"] == "unknown_type"
    assert ("ref" in err) is echoed and (not echoed or err["ref"] == ref)
    await ws.close()


async def test_nesting_deeper_than_the_limit_is_invalid_message(client: Client) -> None:
    ws = await client.ws_connect("/ws")
    deep: Any = 1
    for _ in range(MAX_NESTING + 2):
        deep = {"a": deep}
    await ws.send_json({"type": "ping", "x": deep})
    err = await recv(ws)
    assert err["code"] == "invalid_message" and str(MAX_NESTING) in err["message"]
    shallow: Any = 1
    for _ in range(MAX_NESTING - 2):
        shallow = [shallow]
    await ws.send_json({"type": "ping", "x": shallow})
    assert await recv(ws) == {"type": "pong"}
    await ws.close()


async def test_a_message_over_the_limit_is_message_too_large_counting_utf8_bytes(
        make_client: MakeClient) -> None:
    client = await make_client(signalling={"max_message_bytes": 200})
    ws = await client.ws_connect("/ws")
    fits = json.dumps({"type": "ping", "pad": "x" * 150})
    assert len(fits) <= 200
    await ws.send_str(fits)
    assert await recv(ws) == {"type": "pong"}
    await ws.send_str(json.dumps({"type": "ping", "pad": "x" * 250}))
    err = await recv(ws)
    assert err["code"] == "message_too_large" and "200 bytes" in err["message"]
    # 60 Chinese characters are 60 characters but 180 bytes: over the limit by bytes only
    wide = json.dumps({"type": "ping", "pad": "话" * 60}, ensure_ascii=False)
    assert len(wide) < 200 < len(wide.encode())
    await ws.send_str(wide)
    assert (await recv(ws))["code"] == "message_too_large"
    await ws.close()


async def test_a_frame_over_the_frame_limit_closes_the_socket(make_client: MakeClient) -> None:
    client = await make_client(signalling={"max_message_bytes": 1000, "max_frame_bytes": 4096})
    ws = await client.ws_connect("/ws")
    await ws.send_str("x" * 10000)
    msg = await asyncio.wait_for(ws.receive(), 5.0)
    assert msg.type in (WSMsgType.CLOSE, WSMsgType.CLOSED, WSMsgType.CLOSING)
    # the server still serves everyone else
    other = await client.ws_connect("/ws")
    await other.send_json({"type": "ping"})
    assert await recv(other) == {"type": "pong"}
    await other.close()


async def test_a_binary_frame_closes_with_1003(client: Client) -> None:
    ws, _ = await authed(client, "alice")
    await ws.send_bytes(b'{"type":"ping"}')
    while True:
        msg = await asyncio.wait_for(ws.receive(), 5.0)
        if msg.type != WSMsgType.TEXT:
            break
    assert msg.type == WSMsgType.CLOSE and msg.data == CLOSE_UNSUPPORTED and msg.extra == "text frames only"
    # the user went offline with the socket
    await until(lambda: client.app[HUB].presence("alice") == "offline", 2, "alice offline", interval=0.01)


async def test_over_the_rate_limit_frames_are_rate_limited(make_client: MakeClient) -> None:
    client = await make_client(signalling={"rate_per_s": 0.001, "rate_burst": 3})
    ws = await client.ws_connect("/ws")
    for i in range(3):
        await ws.send_json({"type": "ping", "id": i})
        assert await recv(ws) == {"type": "pong"}
    await ws.send_json({"type": "ping", "id": 3})
    err = await recv(ws)
    assert err["code"] == "rate_limited" and err["message"] == "slow down"
    await ws.close()


async def test_ping_pong_keeps_order(client: Client) -> None:
    ws, _ = await authed(client, "alice")
    for i in range(20):
        await ws.send_json({"type": "ping"} if i % 2 else {"type": "nope", "id": i})
    got = [await recv(ws) for _ in range(20)]
    assert [g["type"] for g in got] == ["error", "pong"] * 10
    assert [g["ref"] for g in got if g["type"] == "error"] == list(range(0, 20, 2))
    await ws.close()


# --- TokenBucket -----------------------------------------------------------------------------------------

def test_the_bucket_starts_full_and_refills_at_its_rate() -> None:
    b = TokenBucket(rate=2.0, burst=3, now=100.0)
    assert [b.take(100.0) for _ in range(4)] == [True, True, True, False]
    assert not b.take(100.4)          # 0.8 of a token
    assert b.take(100.5)              # 1.0 by now
    assert not b.take(100.5)
    assert [b.take(1000.0) for _ in range(4)] == [True, True, True, False]  # never more than burst


@given(rate=st.floats(0.1, 100.0), burst=st.integers(1, 50),
       gaps=st.lists(st.floats(0.0, 2.0), min_size=1, max_size=200))
def test_the_bucket_never_allows_more_than_burst_plus_rate_times_elapsed(
        rate: float, burst: int, gaps: list[float]) -> None:
    b = TokenBucket(rate, burst, now=0.0)
    now, allowed = 0.0, 0
    for gap in gaps:
        now += gap
        allowed += b.take(now)
        assert allowed <= burst + rate * now + 1e-6
        assert 0.0 <= b.tokens <= burst


# --- the outbox --------------------------------------------------------------------------------------------

@dataclass
class FakeWs:
    """The two things WsSession uses of a WebSocketResponse, recording what it is asked."""
    sent: list[str] = field(default_factory=list)
    closes: list[tuple[int, bytes]] = field(default_factory=list)
    closed: bool = False
    gate: asyncio.Event = field(default_factory=asyncio.Event)

    async def send_str(self, text: str) -> None:
        await self.gate.wait()
        self.sent.append(text)

    async def close(self, code: int, message: bytes) -> None:
        self.closes.append((code, message))
        self.closed = True


async def test_the_outbox_sends_in_order_compact_and_finish_flushes_it() -> None:
    fake = FakeWs()
    fake.gate.set()
    s = WsSession(cast(web.WebSocketResponse, fake), "s1")
    for i in range(5):
        s.send({"type": "n", "i": i})
    await s.finish()
    assert fake.sent == [f'{{"type":"n","i":{i}}}' for i in range(5)]
    assert s.writer.done()


async def test_a_client_that_does_not_read_is_closed_as_too_slow(monkeypatch: pytest.MonkeyPatch) -> None:
    fake = FakeWs()  # the gate stays shut: nothing drains
    s = WsSession(cast(web.WebSocketResponse, fake), "s2")
    for i in range(ws_mod.OUTBOX_LIMIT + 1):
        s.send({"i": i})
    for _ in range(10):
        await asyncio.sleep(0)
    assert fake.closes == [(ws_mod.CLOSE_SLOW_CONSUMER, b"too slow")]
    s.writer.cancel()
    await s.finish()


async def test_close_on_a_closed_socket_does_nothing() -> None:
    fake = FakeWs(closed=True)
    fake.gate.set()
    s = WsSession(cast(web.WebSocketResponse, fake), "s3")
    s.close(1000, "bye")
    await asyncio.sleep(0)
    assert fake.closes == []
    await s.finish()


async def test_a_send_that_fails_ends_the_writer_quietly() -> None:
    class Broken(FakeWs):
        async def send_str(self, text: str) -> None:
            raise ConnectionResetError("gone")

    s = WsSession(cast(web.WebSocketResponse, Broken()), "s4")
    s.send({"a": 1})
    await asyncio.wait_for(s.writer, 2.0)
    assert s.writer.exception() is None
    await s.finish()


# --- TURN credentials and their refresh at half-life (injected clock) ---------------------------------

TURN = {"turn_urls": ["turn:127.0.0.1:3478?transport=udp"], "turn_secret": "s3cret", "turn_ttl_s": 600}


async def test_auth_ok_carries_own_turn_credentials_that_expire_after_the_ttl(
        make_client: MakeClient, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(ws_mod, "time", SimpleNamespace(time=lambda: 1_000_000.0))
    client = await make_client(ice=TURN)
    ws, ok = await authed(client, "alice")
    assert ok["ice_expires_at"] == 1_000_600
    (turn,) = ok["ice_servers"]
    assert turn["urls"] == TURN["turn_urls"] and turn["username"] == "1000600:alice"
    assert turn["credential"] and "s3cret" not in json.dumps(ok)
    await ws.close()


async def test_relay_policy_is_announced_only_when_not_all(make_client: MakeClient) -> None:
    client = await make_client(ice={**TURN, "transport_policy": "relay"})
    ws, ok = await authed(client, "alice")
    assert ok["ice_transport_policy"] == "relay"
    await ws.close()


class Scheduler:
    """Stands in for loop.call_later: records (delay, callback) and runs them when told."""

    def __init__(self) -> None:
        self.calls: list[tuple[float, Callable[[], None]]] = []

    def call_later(self, delay: float, cb: Callable[[], None]) -> asyncio.TimerHandle:
        self.calls.append((delay, cb))
        return cast(asyncio.TimerHandle, SimpleNamespace(cancel=lambda: None))


async def test_fresh_credentials_are_pushed_at_half_life_for_as_long_as_the_socket_lives(
        monkeypatch: pytest.MonkeyPatch) -> None:
    clock = [5000.0]
    monkeypatch.setattr(ws_mod, "time", SimpleNamespace(time=lambda: clock[0]))
    sched = Scheduler()
    loop = asyncio.get_running_loop()
    monkeypatch.setattr(loop, "call_later", sched.call_later)
    cfg = load_config(None, environ={}, overrides={"ice": TURN})
    pushed: list[dict[str, Any]] = []
    sock = SimpleNamespace(closed=False)
    session = cast(WsSession, SimpleNamespace(ws=sock, send=pushed.append, ice_timer=None))
    out = ws_mod._ice(cfg, "bob", session)
    assert out["ice_expires_at"] == 5600
    assert [d for d, _ in sched.calls] == [300.0]  # half of the 600 s lifetime
    for step in range(1, 4):
        clock[0] += 300.0
        sched.calls.pop(0)[1]()
        assert pushed[-1]["type"] == "ice_servers"
        assert pushed[-1]["ice_expires_at"] == int(clock[0]) + 600
        assert pushed[-1]["ice_servers"][0]["username"] == f"{int(clock[0]) + 600}:bob"
        assert len(pushed) == step and [d for d, _ in sched.calls] == [300.0]  # re-armed once
    sock.closed = True
    sched.calls.pop(0)[1]()
    assert len(pushed) == 3 and sched.calls == []  # a closed socket stops the refresh


async def test_no_turn_means_no_refresh_timer(monkeypatch: pytest.MonkeyPatch) -> None:
    sched = Scheduler()
    monkeypatch.setattr(asyncio.get_running_loop(), "call_later", sched.call_later)
    cfg = load_config(None, environ={}, overrides={})
    session = cast(WsSession, SimpleNamespace(ws=SimpleNamespace(closed=False), send=None, ice_timer=None))
    out = ws_mod._ice(cfg, "bob", session)
    assert out == {"ice_servers": []} and sched.calls == []


async def test_more_sockets_than_allowed_per_user_is_too_many_sessions(make_client: MakeClient) -> None:
    client = await make_client(signalling={"max_sessions_per_user": 2})
    token = await register(client, "alice")
    socks = []
    for _ in range(2):
        ws = await client.ws_connect("/ws")
        await ws.send_json({"type": "auth", "token": token})
        await recv_type(ws, "auth_ok")
        socks.append(ws)
    third = await client.ws_connect("/ws")
    await third.send_json({"type": "auth", "token": token, "id": "t3"})
    got = await recv(third)
    assert got["type"] == "error" and got["code"] == "too_many_sessions", got
    await socks[0].close()  # one goes: there is room again
    await until(lambda: len(client.app[HUB].core.sessions) < 2, 2, "the closed session gone", interval=0.01)
    fourth = await client.ws_connect("/ws")
    await fourth.send_json({"type": "auth", "token": token})
    assert (await recv_type(fourth, "auth_ok"))["username"] == "alice"
    for ws in (socks[1], third, fourth):
        await ws.close()


async def test_finish_with_a_full_outbox_cancels_the_writer() -> None:
    fake = FakeWs()  # never drains
    s = WsSession(cast(web.WebSocketResponse, fake), "s5")
    for i in range(ws_mod.OUTBOX_LIMIT):
        s.outbox.put_nowait(str(i))
    await s.finish()
    assert s.writer.cancelled() and fake.sent == []

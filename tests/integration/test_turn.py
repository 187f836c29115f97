"""TURN with ephemeral credentials against a real coturn (`use-auth-secret`, tests/servers.py):
the credentials the server hands out are accepted, forged and expired ones are refused by
coturn, an aiortc call forced through the relay (`ice_transport_policy = "relay"`, what the
bridge's app leg does when auth_ok says so) carries a tone judged by content, and the
signalling server gives each user their own short-lived credentials, pushes fresh ones before
they expire, and never the secret.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import re
import time
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import aioice.stun
import aioice.turn
import pytest
from aiohttp.test_utils import TestClient, TestServer

from jego_call.config import IceConfig, load_config
from jego_call.media import analysis
from jego_call.media.endpoint import MediaEndpoint, enable_loopback_candidates
from jego_call.media.sinks import Analyser
from jego_call.media.tracks import ToneSource
from jego_call.signalling import ws as ws_module
from jego_call.signalling.server import create_app
from jego_call.signalling.turn import ice_servers_for, turn_credentials
from tests.helpers import until, wait_for
from tests.servers import TurnServer, coturn_server

from .bridge_util import PLAIN, phone_server
from .sigclient import AppClient, Ws, register
from .test_dial import dial

SECRET = "s3cret-for-tests"


@pytest.fixture(scope="module")
def turn(tmp_path_factory: pytest.TempPathFactory) -> Iterator[TurnServer]:
    with coturn_server(tmp_path_factory.mktemp("coturn"), secret=SECRET, verbose=True) as t:
        yield t


class _Sink(asyncio.DatagramProtocol):
    pass


async def allocate(turn: TurnServer, username: str, password: str) -> tuple[str, int]:
    """One TURN allocation (RFC 5766 §6) with these credentials; its relayed address."""
    transport, _ = await aioice.turn.create_turn_endpoint(_Sink, ("127.0.0.1", turn.port), username, password)
    try:
        addr = transport.get_extra_info("sockname")
        return str(addr[0]), int(addr[1])
    finally:
        transport.close()


async def test_coturn_takes_our_credentials_and_refuses_forged_and_expired_ones(turn: TurnServer) -> None:
    user, password, expiry = turn_credentials(SECRET, "alice", time.time(), 600)
    assert user == f"{expiry}:alice"
    host, port = await allocate(turn, user, password)
    assert host == "127.0.0.1" and port > 0
    _, forged, _ = turn_credentials("not-the-secret", "alice", time.time(), 600)
    with pytest.raises(aioice.stun.TransactionFailed) as info:
        await allocate(turn, user, forged)
    assert info.value.response.attributes["ERROR-CODE"][0] == 401
    old_user, old_password, old_expiry = turn_credentials(SECRET, "alice", time.time() - 3600, 60)
    assert old_expiry < time.time()
    with pytest.raises(aioice.stun.TransactionFailed) as info:
        await allocate(turn, old_user, old_password)  # signed right, but expired
    assert info.value.response.attributes["ERROR-CODE"][0] == 401
    # a username for another user with alice's password
    with pytest.raises(aioice.stun.TransactionFailed):
        await allocate(turn, f"{expiry}:mallory", password)


async def test_a_relay_only_call_through_coturn_carries_the_tone(turn: TurnServer) -> None:
    enable_loopback_candidates()
    ice = IceConfig(turn_urls=(turn.url,), turn_secret=SECRET, turn_ttl_s=600, transport_policy="relay")
    servers_a, _ = ice_servers_for(ice, "alice", time.time())
    servers_b, _ = ice_servers_for(ice, "gw.bridge-1", time.time())
    assert all(SECRET not in json.dumps(s) for s in (servers_a, servers_b))
    an = Analyser()
    a = MediaEndpoint(source=ToneSource(1000, -10), ice_servers=servers_a, ice_transport_policy="relay", name="A")
    b = MediaEndpoint(sinks=[an], ice_servers=servers_b, ice_transport_policy="relay", name="B")
    try:
        offer = await a.create_offer()
        assert "typ relay" in offer and "typ host" not in offer and "typ srflx" not in offer
        answer = await b.accept_offer(offer)
        assert "typ relay" in answer and "typ host" not in answer
        await a.set_answer(answer)
        await a.wait_connected(20)
        await b.wait_connected(20)
        await until(lambda: an.received_s > 1.5, 15, "1.5 s of the tone through the relay")
        assert an.dominant_hz == pytest.approx(1000, abs=10)
        assert an.level_dbfs == pytest.approx(analysis.sine_rms_dbfs(-10), abs=1.0)
        assert an.received_s > 1.0
    finally:
        await a.close()
        await b.close()
    text = (Path(turn.server.log.parent) / "turnserver.log").read_text(errors="replace")
    for user in ("alice", "gw.bridge-1"):  # both ends allocated a relay with their own credentials
        assert re.search(rf"user <\d+:{re.escape(user)}>: incoming packet ALLOCATE processed, success", text), text
    assert relayed_bytes(turn, "alice", 10_000) >= 10_000, text[-3000:]  # the tone really went through the relay


def relayed_bytes(turn: TurnServer, user: str, at_least: int, timeout: float = 15.0) -> int:
    """Bytes coturn received from `user`'s allocations (its `usage:` lines, rb=, written
    periodically and when an allocation ends), waiting until there are `at_least`."""
    path = Path(turn.server.log.parent) / "turnserver.log"
    pattern = re.compile(rf"\busage: realm=<[^>]*>, username=<\d+:{re.escape(user)}>, rp=\d+, rb=(\d+)")

    def got() -> int:
        return sum(int(rb) for rb in pattern.findall(path.read_text(errors="replace")))

    with contextlib.suppress(AssertionError):  # the callers judge the count, with coturn's log
        wait_for(lambda: got() >= at_least, timeout, f"{at_least} relayed bytes from {user}", interval=0.2)
    return got()


@pytest.fixture
async def turn_app(turn: TurnServer, tmp_path: Path) -> AsyncIterator[AppClient]:
    cfg = load_config(None, environ={}, overrides={
        "data": {"dir": str(tmp_path / "data")},
        "ice": {"turn_urls": [turn.url], "turn_secret": SECRET, "turn_ttl_s": 600, "transport_policy": "relay"}})
    c = TestClient(TestServer(create_app(cfg), host="127.0.0.1"))
    await c.start_server()
    yield c
    await c.close()


async def test_the_server_hands_out_own_short_lived_credentials_and_refreshes_them(
        turn_app: AppClient, turn: TurnServer, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(ws_module, "refresh_after_s", lambda _ice: 0.5)  # instead of half of turn_ttl_s
    token = await register(turn_app, "alice")
    ws = await Ws.open(turn_app, token)
    ok = next(m for m in ws.seen if m["type"] == "auth_ok")
    assert ok["ice_transport_policy"] == "relay"
    (server,) = ok["ice_servers"]
    assert server["urls"] == [turn.url]
    expiry = int(server["username"].split(":")[0])
    assert server["username"] == f"{expiry}:alice" and ok["ice_expires_at"] == expiry
    assert 590 <= expiry - time.time() <= 601
    assert await allocate(turn, server["username"], server["credential"])  # coturn takes them
    fresh = await ws.expect("ice_servers", timeout=5)
    assert fresh["ice_expires_at"] >= expiry and fresh["ice_servers"][0]["username"].endswith(":alice")
    # GET /api/config: the same for a signed-in user, no credentials without a token
    res = await turn_app.get("/api/config", headers={"Authorization": f"Bearer {token}"})
    body = await res.json()
    assert body["ice_transport_policy"] == "relay" and body["ice_servers"][0]["username"].endswith(":alice")
    anon = await (await turn_app.get("/api/config")).json()
    assert all("credential" not in s for s in anon["ice_servers"])
    for m in [*ws.seen, body, anon]:
        assert SECRET not in json.dumps(m)
    await ws.close()


def test_an_app_to_phone_call_through_the_relay_carries_the_echo(tmp_path: Path) -> None:
    """`jego dial` -> server -> the in-process bridge worker -> the simulated carrier (echo): both
    WebRTC ends (the dialer and the bridge's aiortc leg) relay-only through coturn (its own, so
    the bytes it counts are this call's)."""
    with coturn_server(tmp_path / "coturn", secret=SECRET, verbose=True) as turn:
        freq, level = phone_call_through(turn, tmp_path)
    assert freq == pytest.approx(1000, abs=20) and level > -25.0  # the carrier's echo of our tone


def phone_call_through(turn: TurnServer, tmp_path: Path) -> tuple[float, float]:
    server = phone_server(tmp_path, JEGO_ICE_TURN_URLS=f'["{turn.url}"]', JEGO_ICE_TURN_SECRET=SECRET,
                          JEGO_ICE_TRANSPORT_POLICY="relay")
    try:
        rec = tmp_path / "phone.wav"
        code, res, err = dial(server, PLAIN, "--play", "tone:1000:-10:3", "--duration", "4", "--record", str(rec),
                              "--json")
        assert code == 0, err + server.log()[-3000:]
        assert res is not None and res["outcome"] == "answered"
        x, rate = analysis.read_wav(rec)
        body = x[int(1.0 * rate): int(2.8 * rate)]
        heard = (float(analysis.dominant_frequency(body, rate)), float(analysis.level_dbfs(body)))
    finally:
        server.stop()
    text = (Path(turn.server.log.parent) / "turnserver.log").read_text(errors="replace")
    assert re.search(r"user <\d+:gw\.[A-Za-z0-9._-]+>: incoming packet ALLOCATE processed, success", text), text[-3000:]
    assert relayed_bytes(turn, "alice", 10_000) >= 10_000
    return heard

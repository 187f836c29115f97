"""Two `jego serve` processes on a real redis-server (tests/servers.py), sharing one data dir as
nodes share their database: a `jego dial` call from a user on node A to a user on node B with
the audio judged by content, and `kill -9` of node A mid-call (the peer on B is told
`peer_lost` within 10 s, no acknowledged message is lost, and the client of node A, which knows
both nodes (`JegoClient(urls=[A, B])`), resumes on B by itself with its token and carries on).

test_cluster.py has the in-process cases (every relayed message, first answer wins, busy,
gateways, Redis going away).
"""

from __future__ import annotations

import asyncio
import random
import signal
import subprocess
import sys
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from jego_call.client import Backoff, JegoClient
from jego_call.media import analysis
from tests.conftest import ROOT, LiveServer, add_contact, http_json, make_user, start_server, top_up
from tests.helpers import wait_for
from tests.servers import RedisServer, redis_server

from .bridge_util import PLAIN, TEST_CALLER_FRAUD, carrier_config, carrier_record, free_port
from .test_dial import Answerer, _env, dial

NodeFactory = Callable[..., LiveServer]


@pytest.fixture(scope="module")
def redis(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RedisServer]:
    with redis_server(tmp_path_factory.mktemp("redis")) as r:
        yield r


@pytest.fixture
def node(redis: RedisServer, tmp_path: Path) -> Iterator[NodeFactory]:
    """`node("a")`: a `jego serve` process of this test's cluster (one data dir, one key prefix)."""
    prefix = f"t{uuid.uuid4().hex[:10]}"
    started: list[LiveServer] = []

    def start(node_id: str, extra_args: list[str] | None = None, **env: str) -> LiveServer:
        s = start_server(tmp_path, extra_args, JEGO_CLUSTER_REDIS_URL=redis.url, JEGO_CLUSTER_NODE_ID=node_id,
                         JEGO_CLUSTER_KEY_PREFIX=prefix, JEGO_CLUSTER_HEARTBEAT_S="0.5",
                         JEGO_CLUSTER_NODE_TTL_S="3", JEGO_SIGNALLING_HEARTBEAT_S="2", **env)
        started.append(s)
        return s

    yield start
    for s in started:
        s.stop()


class Client:
    """One signalling WebSocket of a user, reading in the background."""

    def __init__(self, http: aiohttp.ClientSession, ws: aiohttp.ClientWebSocketResponse) -> None:
        self.http, self.ws = http, ws
        self.seen: list[dict[str, Any]] = []
        self._new = asyncio.Event()
        self._reader = asyncio.get_running_loop().create_task(self._read())

    @classmethod
    async def open(cls, server: LiveServer, token: str) -> Client:
        http = aiohttp.ClientSession()
        ws = await http.ws_connect(server.ws_url)
        await ws.send_json({"type": "auth", "token": token})
        c = cls(http, ws)
        await c.expect("auth_ok")
        return c

    async def _read(self) -> None:
        async for msg in self.ws:
            if msg.type == aiohttp.WSMsgType.TEXT:
                self.seen.append(msg.json())
                self._new.set()

    async def expect(self, kind: str, timeout: float = 10.0, **fields: Any) -> dict[str, Any]:
        deadline = time.monotonic() + timeout
        i = 0
        while True:
            while i < len(self.seen):
                m = self.seen[i]
                i += 1
                if m.get("type") == kind and all(m.get(k) == v for k, v in fields.items()):
                    return m
            left = deadline - time.monotonic()
            if left <= 0:
                raise AssertionError(f"no {kind} {fields} in {self.seen[-10:]}")
            self._new.clear()
            try:
                await asyncio.wait_for(self._new.wait(), left)
            except TimeoutError:
                pass

    async def send(self, msg: dict[str, Any]) -> None:
        await self.ws.send_json(msg)

    async def close(self) -> None:
        self._reader.cancel()
        await self.ws.close()
        await self.http.close()


def users(server: LiveServer, *names: str) -> dict[str, str]:
    tokens = {n: make_user(server, n) for n in names}
    for n in names:
        for other in names:
            if other != n:
                add_contact(server, tokens[n], other)
    return tokens


def test_dialer_call_from_node_a_to_node_b_carries_the_tone(node: NodeFactory, tmp_path: Path) -> None:
    a, b = node("a"), node("b")
    users(a, "alice", "bob")
    bob = Answerer(b, "bob", ["--echo", "--count", "1"], tmp_path)
    try:
        rec = tmp_path / "tone.wav"
        code, res, err = dial(a, "bob", "--play", "tone:1000:-10:4", "--duration", "5", "--record", str(rec),
                              "--json")
        assert code == 0, err + a.log()[-3000:] + b.log()[-3000:]
        assert res is not None and res["outcome"] == "answered" and res["reason"] == "hangup"
        audio = res["audio"]
        assert audio["packets_received"] > 200 and audio["dominant_hz"] == pytest.approx(1000, abs=20)
        x, rate = analysis.read_wav(rec)  # the echo from bob, on the other node, judged by content
        body = x[int(0.5 * rate): int(3.5 * rate)]
        assert analysis.dominant_frequency(body, rate) == pytest.approx(1000, abs=20)
        assert analysis.level_dbfs(body) == pytest.approx(analysis.sine_rms_dbfs(-10), abs=2)
        assert bob.wait() == 0
        (callee,) = bob.results()
        assert callee["outcome"] == "answered" and callee["call_id"] == res["call_id"]
    finally:
        bob.stop()
    # one record of the call, written by its owner (the caller's node)
    status, page = http_json("GET", f"{b.url}/api/calls", token=make_token(b, "bob"))
    assert status == 200, page
    assert [c["call_id"] for c in page["calls"]].count(res["call_id"]) == 1


def make_token(server: LiveServer, name: str) -> str:
    status, body = http_json("POST", f"{server.url}/api/login", {"username": name, "password": "correct-horse-9"})
    assert status == 200, body
    return str(body["token"])


async def presence(c: JegoClient, who: str, want: str, timeout: float = 10.0) -> None:  # noqa: ASYNC109
    async with asyncio.timeout(timeout):
        while True:
            m = await c.wait_for("presence", timeout=timeout)
            if m.get("username") == who and m.get("presence") == want:
                return


async def test_kill_9_of_node_a_mid_call(node: NodeFactory) -> None:
    a, b = node("a"), node("b")
    t = users(a, "alice", "bob")
    # alice's app knows both nodes (JegoClient urls) and starts on a; bob is on b
    alice = JegoClient(urls=[a.url, b.url], auto_ringing=False)
    alice.token = t["alice"]
    assert (await alice.connect())["username"] == "alice" and alice.url == a.url
    bob = await Client.open(b, t["bob"])
    await presence(alice, "bob", "online")
    ack = await alice.send_message("bob", "还在吗", client_id="before-kill-1")
    await bob.expect("message", timeout=10)
    cid = uuid.uuid4().hex
    await alice.invite(cid, "bob", "v=0\r\no=- 1 1 IN IP4 127.0.0.1\r\ns=-\r\nt=0 0\r\nm=audio 9 RTP/AVP 0\r\n")
    await bob.expect("invite", call_id=cid)
    await bob.send({"type": "accept", "call_id": cid, "sdp": "v=0\r\no=- 2 2 IN IP4 127.0.0.1\r\ns=-\r\n"})
    while (await alice.wait_for("call_state", call_id=cid)).get("state") != "connected":
        pass

    a.proc.send_signal(signal.SIGKILL)
    t0 = time.monotonic()
    a.proc.wait(10)
    ended = await bob.expect("call_ended", call_id=cid, timeout=12)
    took = time.monotonic() - t0
    assert ended["reason"] == "peer_lost" and took < 10.0, (ended, took)
    await bob.expect("presence", username="alice", presence="offline")
    await asyncio.wait_for(alice.wait_closed(), 10)   # her client saw node a go

    # alice's client resumes on its own: the next node of its list, her kept token (no password)
    hello = await alice.reconnect(Backoff(random.Random(12), base_s=0.2, cap_s=1.0), max_attempts=10)
    assert hello["username"] == "alice" and alice.url == b.url and alice.reconnect_attempts == 1
    await alice.send({"type": "sync"})
    done = await alice.wait_for("sync_done")
    assert done["count"] >= 0
    page = await alice.messages("bob")               # her HTTP calls follow her to node b
    assert [(m["seq"], m["text"]) for m in page["messages"]] == [(ack["message"]["seq"], "还在吗")]
    cid2 = uuid.uuid4().hex
    await alice.invite(cid2, "bob", "v=0\r\no=- 1 1 IN IP4 127.0.0.1\r\ns=-\r\nt=0 0\r\nm=audio 9 RTP/AVP 0\r\n")
    await bob.expect("invite", call_id=cid2)  # bob is free again: the dead node's call was released
    await bob.send({"type": "decline", "call_id": cid2})
    assert (await alice.wait_for("call_ended", call_id=cid2))["reason"] == "declined"
    # the killed call was ended and recorded once, by the node that took it over
    status, page = http_json("GET", f"{b.url}/api/calls", token=t["bob"])
    assert status == 200, page
    mine = [c for c in page["calls"] if c["call_id"] == cid]
    assert len(mine) == 1 and mine[0]["outcome"] == "peer_lost", mine
    await alice.close()
    await bob.close()
    assert "node a is gone" in b.log()


def test_app_to_phone_on_node_a_through_a_bridge_worker_on_node_b(node: NodeFactory, tmp_path: Path) -> None:
    port = free_port()
    trunk = {"JEGO_CARRIER_CONFIG": str(carrier_config(tmp_path, port)), "JEGO_BRIDGE_TRUNK_PORT": str(port)}
    a = node("a", ["--no-bridge"], **trunk, **TEST_CALLER_FRAUD)  # the simulated carrier runs in node a's process
    b = node("b", ["--no-carrier", "--no-bridge"], **TEST_CALLER_FRAUD)
    make_user(a, "alice")
    top_up(a, "alice")  # the phone call is paid (issue 13); the nodes share the ledger's database
    log = tmp_path / "bridge.log"
    worker = subprocess.Popen(
        [sys.executable, "-m", "jego_call.cli.main", "bridge", "--server", b.url, "--data-dir", str(b.data_dir),
         "--max-calls", "2", "--name", "on-b"],
        cwd=ROOT, env={**_env(), **trunk}, stdout=open(log, "w"), stderr=subprocess.STDOUT, text=True)  # noqa: SIM115
    try:
        def connected() -> bool:
            assert worker.poll() is None, log.read_text()
            return "connected to http" in log.read_text()

        wait_for(connected, 30, "the worker to connect to node b")
        rec = tmp_path / "phone.wav"
        code, res, err = dial(a, PLAIN, "--play", "tone:1000:-10:3", "--duration", "4", "--record", str(rec),
                              "--json")
        assert code == 0, err + a.log()[-3000:] + b.log()[-3000:] + log.read_text()[-3000:]
        assert res is not None and res["outcome"] == "answered" and res["reason"] == "hangup"
        # the carrier echoes: the tone went app -> node a's caller -> worker on b -> SIP trunk and back
        x, rate = analysis.read_wav(rec)
        body = x[int(1.0 * rate): int(2.8 * rate)]
        assert analysis.dominant_frequency(body, rate) == pytest.approx(1000, abs=20)
        assert analysis.level_dbfs(body) > -25.0
        assert carrier_record(a, PLAIN)["outcome"] == "hangup"
        assert "gateway on-b connected (capacity 2)" in b.log()
        assert "on-b" in a.log()  # node a routed the call to the worker of node b
    finally:
        if worker.poll() is None:
            worker.send_signal(signal.SIGTERM)
            try:
                worker.wait(20)
            except subprocess.TimeoutExpired:
                worker.kill()

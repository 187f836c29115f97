"""`jego serve` with `[db] url = "postgresql://..."` for real: a real PostgreSQL (tests/servers.py,
stopped by PID), real `jego serve` and `jego dial` subprocesses.

One run: a call between two users with its audio judged by content and its record in
/api/calls; a message to an offline user; the node restarted (a new process, same data dir)
and a second node on another data dir: tokens, messages and call records are all there;
PostgreSQL stopped under the running node: /healthz 503, a message refused with
service_unavailable and never acknowledged, the node alive; PostgreSQL back: the same node
recovers without a restart, the retried message is stored once with no gap. Bad settings and an
unreachable server at start-up: a clear message and a non-zero exit.
"""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from jego_call.media import analysis
from tests.conftest import ROOT, LiveServer, add_contact, http_json, make_user
from tests.helpers import wait_for
from tests.servers import HOST, PostgresServer, _pg_bin, free_port, postgres_server

from .sigclient import Ws
from .test_dial import Answerer, dial

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def pg(tmp_path_factory: pytest.TempPathFactory) -> Iterator[PostgresServer]:
    with postgres_server(tmp_path_factory.mktemp("pg")) as server:
        yield server


def new_database(pg: PostgresServer) -> str:
    name = f"serve{uuid.uuid4().hex[:8]}"
    subprocess.run([_pg_bin("createdb"), "-h", HOST, "-p", str(pg.port), "-U", "jego", name], check=True)
    return pg.url.rsplit("/", 1)[0] + "/" + name


def wait_health(server: LiveServer, status: int, timeout: float = 15.0) -> dict[str, Any]:
    def health() -> dict[str, Any] | None:
        got, body = http_json("GET", f"{server.url}/healthz")
        return dict(body) if got == status else None

    return wait_for(health, timeout, f"/healthz to say {status}", interval=0.2)


async def _ws(http: aiohttp.ClientSession, server: LiveServer, token: str) -> Ws:
    w = Ws(await http.ws_connect(server.ws_url))
    await w.send({"type": "auth", "token": token})
    await w.expect("auth_ok")
    return w


async def send_message(server: LiveServer, token: str, to: str, text: str, client_id: str) -> dict[str, Any]:
    """One send_message; returns the message_ack or the error, whichever comes."""
    async with aiohttp.ClientSession() as http:
        w = await _ws(http, server, token)
        await w.send({"type": "send_message", "id": client_id, "client_id": client_id, "to": to, "text": text})
        while True:
            got = await w.recv(15)
            if got["type"] in ("message_ack", "error"):
                await w.close()
                return got


async def sync_all(server: LiveServer, token: str) -> list[dict[str, Any]]:
    async with aiohttp.ClientSession() as http:
        w = await _ws(http, server, token)
        await w.send({"type": "sync"})
        out: list[dict[str, Any]] = []
        while True:
            got = await w.recv(10)
            if got["type"] == "message":
                out.append(got["message"])
            elif got["type"] == "sync_done":
                await w.close()
                return out


async def outage(node: LiveServer, pg: PostgresServer, token: str) -> None:
    loop = asyncio.get_running_loop()
    async with aiohttp.ClientSession() as http:
        w = await _ws(http, node, token)            # connected before the outage
        await loop.run_in_executor(None, pg.server.stop, signal.SIGINT)
        try:
            health = await loop.run_in_executor(None, wait_health, node, 503)
            assert health["storage"] == "unavailable"
            cid = "msg-0002"
            await w.send({"type": "send_message", "id": cid, "client_id": cid, "to": "bob",
                          "text": "during the outage"})
            err = await w.expect("error", 10)
            assert (err["code"], err["ref"]) == ("service_unavailable", cid), err
            assert not [m for m in w.seen if m.get("type") == "message_ack"]
            late = Ws(await http.ws_connect(node.ws_url))      # a new login is refused the same way
            await late.send({"type": "auth", "token": token})
            assert (await late.expect("error", 10))["code"] == "service_unavailable"
            await late.close()
        finally:
            await loop.run_in_executor(None, pg.server.start)
        assert (await loop.run_in_executor(None, wait_health, node, 200))["status"] == "ok"
        await w.send({"type": "send_message", "id": cid, "client_id": cid, "to": "bob", "text": "during the outage"})
        ack = await w.expect("message_ack", 10, client_id=cid)
        assert ack["message"]["seq"] == 2 and not ack["duplicate"], ack
        await w.close()


def test_jego_serve_on_postgresql(pg: PostgresServer, server_factory: Callable[..., LiveServer],
                                  tmp_path: Path) -> None:
    url = new_database(pg)
    node = server_factory(JEGO_DB_URL=url)
    assert "storage: PostgreSQL" in node.log() and "pool 1-10" in node.log()
    assert not (node.data_dir / "jego.sqlite3").exists()                   # nothing went to SQLite
    assert wait_health(node, 200)["status"] == "ok"
    ta, tb = make_user(node, "alice"), make_user(node, "bob")
    add_contact(node, ta, "bob")
    add_contact(node, tb, "alice")

    # a call through the node, its audio judged by content
    bob = Answerer(node, "bob", ["--echo", "--count", "1"], tmp_path)
    try:
        rec = tmp_path / "tone.wav"
        code, res, err = dial(node, "bob", "--play", "tone:1000:-10:5", "--duration", "6.5", "--record", str(rec),
                              "--json")
        assert code == 0, err
        assert res is not None and res["outcome"] == "answered" and res["reason"] == "hangup"
        x, rate = analysis.read_wav(rec)   # as tests/integration/test_dial.py judges it
        body = x[int(0.5 * rate): int(4.5 * rate)]
        assert analysis.dominant_frequency(body, rate) == pytest.approx(1000, abs=20)
        assert analysis.level_dbfs(body) == pytest.approx(analysis.sine_rms_dbfs(-10), abs=2)
        assert bob.wait() == 0
    finally:
        bob.stop()
    call_id = res["call_id"]

    # a message to bob while he is offline
    ack = asyncio.run(send_message(node, ta, "bob", "你好, stored in PostgreSQL", "msg-0001"))
    assert ack["type"] == "message_ack" and ack["message"]["seq"] == 1 and not ack["duplicate"], ack

    # restart the node: tokens, the call record and the message are all still there
    node.restart()
    assert "storage: PostgreSQL" in node.log()
    status, calls = http_json("GET", f"{node.url}/api/calls?limit=5", token=ta)
    assert status == 200 and [c["call_id"] for c in calls["calls"]] == [call_id]
    assert calls["calls"][0]["outcome"] == "hangup" and calls["calls"][0]["duration_s"] > 5

    # a second node on another data dir shares it all (the token secret is in the database too)
    other = server_factory(JEGO_DB_URL=url)
    assert other.data_dir != node.data_dir
    status, me = http_json("GET", f"{other.url}/api/me", token=tb)
    assert status == 200 and me["username"] == "bob"
    got = asyncio.run(sync_all(other, tb))
    assert [(m["seq"], m["from"], m["text"]) for m in got] == [(1, "alice", "你好, stored in PostgreSQL")]

    # PostgreSQL goes away under the running node: refused, never acknowledged; the node lives;
    # back: the same node recovers by itself and the retry is stored once, right after seq 1
    asyncio.run(outage(node, pg, ta))
    assert node.proc.poll() is None
    again = asyncio.run(send_message(other, ta, "bob", "during the outage", "msg-0002"))   # retried on the other node
    assert again["type"] == "message_ack" and again["duplicate"] and again["message"]["seq"] == 2
    assert "PostgreSQL is unreachable" in node.log() and "PostgreSQL answers again" in node.log()
    status, page = http_json("GET", f"{other.url}/api/conversations/alice/messages?limit=10", token=tb)
    assert status == 200 and [m["seq"] for m in page["messages"]] == [1, 2]


def _base_env() -> dict[str, str]:
    return {k: v for k, v in os.environ.items() if not k.startswith("JEGO_")}


def _serve_fails(env: dict[str, str], tmp_path: Path) -> tuple[int, str]:
    args = [sys.executable, "-m", "jego_call.cli.main", "serve", "--port", "0", "--data-dir", str(tmp_path / "d"),
            "--no-carrier", "--no-bridge"]
    res = subprocess.run(args, cwd=ROOT, env={**_base_env(), **env}, capture_output=True, text=True, timeout=60)
    return res.returncode, res.stderr


def test_bad_database_settings_are_refused_at_start(tmp_path: Path) -> None:
    code, err = _serve_fails({"JEGO_DB_URL": "mysql://root@127.0.0.1/jego"}, tmp_path)
    assert code == 2 and "db.url" in err and "postgresql://" in err, err
    assert "Traceback" not in err
    port = free_port()   # nothing listens there
    code, err = _serve_fails({"JEGO_DB_URL": f"postgresql://jego:secret-pw@127.0.0.1:{port}/jego"}, tmp_path)
    assert code == 1 and "cannot reach PostgreSQL" in err and f"127.0.0.1:{port}" in err, err
    assert "secret-pw" not in err and "Traceback" not in err       # the password never reaches the log
    assert not (tmp_path / "d" / "jego.sqlite3").exists()          # no silent fall-back to SQLite


def test_password_is_kept_out_of_logs(pg: PostgresServer, server_factory: Callable[..., LiveServer]) -> None:
    url = new_database(pg).replace("jego@", "jego:not-a-real-pw@")   # trust auth ignores it
    node = server_factory(JEGO_DB_URL=url)
    assert "storage: PostgreSQL postgresql://jego@" in node.log() and "not-a-real-pw" not in node.log()
    assert make_user(node, "carol")

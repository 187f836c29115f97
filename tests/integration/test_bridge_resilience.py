"""Bridge worker resilience: it survives a signalling server restart, and never takes a call above
its own limit.

1. A separate `jego bridge` process loses its server (SIGTERM), and a new `jego serve` starts on
   the SAME port and data dir: the worker reconnects by itself within its back-off, in the same
   process, and a phone call from the app is answered through it.
2. A worker told an invite beyond its `max_calls` refuses it with a clear `decline`
   (`congestion`, Q.850 34) instead of squeezing it in. The worker reports `capacity = max_calls`
   in `gateway_auth`, so a server never sends such an invite by design; the test makes the
   server believe there is room by lowering the worker's limit after it authenticated
   (capacity 2, limit 1), then places two calls from two users on a real in-process server. The
   worker's trunk is the real pyVoIP trunk on the real in-process carrier, and the number dialled
   rings until the ring timeout, so the first call holds its slot for the whole test.
"""

from __future__ import annotations

import asyncio
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from bridge.carrier.trunk import Carrier
from bridge.gateway.pyvoip import PyVoipTrunk, TrunkConfig
from bridge.gateway.worker import BridgeWorker
from jego_call.media.endpoint import MediaEndpoint
from jego_call.signalling.keys import GATEWAY_SECRET
from tests.conftest import ROOT, LiveServer, make_user, start_server, top_up
from tests.helpers import until, wait_for

from .bridge_util import carrier_config, free_port
from .carrier_util import running_carrier
from .conftest import Factory
from .sigclient import AppClient, Ws, give_credit, new_call_id, register
from .test_dial import _env, dial

ECHO = "+8613800138000"  # config/carrier.toml: answers and echoes
RINGS = "+8613900000480"  # config/carrier.toml: rings until the ring timeout


# --- 1. reconnect after a server restart ------------------------------------------------------
def serve_on(tmp: Path, port: int, env: dict[str, str]) -> LiveServer:
    """`jego serve` with the carrier, without the in-process bridge, on a fixed HTTP port.

    start_server passes `--port 0` first; argparse keeps the last `--port`, so ours wins.
    aiohttp listens with SO_REUSEADDR, so the same port is free again right after a stop."""
    return start_server(tmp, ["--no-bridge", "--port", str(port)], **env)


def wait_text(path: Path, text: str, count: int, proc: subprocess.Popen[str], timeout: float) -> None:
    def seen() -> bool:
        if path.read_text(errors="replace").count(text) >= count:
            return True
        assert proc.poll() is None, f"the worker exited {proc.poll()}:\n{path.read_text(errors='replace')}"
        return False

    try:
        wait_for(seen, timeout, f"{text!r} x{count} in {path.name}")
    except AssertionError as exc:
        raise AssertionError(f"{text!r} x{count} not in {path.name} (exit {proc.poll()}):\n"
                             f"{path.read_text(errors='replace')}") from exc


@pytest.fixture
def restart_setup(tmp_path: Path) -> Iterator[dict[str, Any]]:
    sip = free_port()
    env = {"JEGO_CARRIER_CONFIG": str(carrier_config(tmp_path, sip)), "JEGO_BRIDGE_TRUNK_PORT": str(sip),
           "JEGO_BRIDGE_MEDIA_TIMEOUT_S": "10"}
    state: dict[str, Any] = {"env": env, "http_port": free_port(), "servers": []}
    server = serve_on(tmp_path, state["http_port"], env)
    state["servers"].append(server)
    make_user(server, "alice")
    top_up(server, "alice")
    log = tmp_path / "bridge.log"
    proc = subprocess.Popen(
        [sys.executable, "-m", "jego_call.cli.main", "bridge", "--server", server.url, "--data-dir",
         str(server.data_dir), "--max-calls", "2", "--name", "resilient"],
        cwd=ROOT, env={**_env(), **env}, stdout=open(log, "w"), stderr=subprocess.STDOUT, text=True)  # noqa: SIM115
    state.update(proc=proc, log=log)
    try:
        wait_text(log, "connected to http", 1, proc, 20)
        yield state
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(5)
        for s in state["servers"]:
            s.stop()


def test_worker_reconnects_after_server_restart(tmp_path: Path, restart_setup: dict[str, Any]) -> None:
    st = restart_setup
    proc: subprocess.Popen[str] = st["proc"]
    log: Path = st["log"]
    old: LiveServer = st["servers"][0]
    pid = proc.pid
    assert "gateway resilient connected (capacity 2)" in old.log()

    assert old.stop() == 0  # SIGTERM: the server closes the worker's socket on its way out
    wait_text(log, "retrying in", 1, proc, 10)  # the worker noticed, and backs off
    time.sleep(1.0)  # stay down for a while: the worker keeps failing to connect, and keeps trying

    new = serve_on(tmp_path, st["http_port"], st["env"])  # same port, same data dir (users, bridge.key)
    st["servers"].append(new)
    assert new.url == old.url
    t0 = time.monotonic()
    wait_text(log, "connected to http", 2, proc, 15)  # back-off is 0.5, 1, 2, 4 ... s (max 10)
    assert time.monotonic() - t0 < 12
    wait_for(lambda: "gateway resilient connected (capacity 2)" in new.log(), 5, "the hub to see the worker again")

    assert proc.poll() is None and proc.pid == pid  # the same worker process, never restarted
    rc, res, err = dial(new, ECHO, "--duration", "3", "--json")
    assert rc == 0 and res is not None, (rc, res, err, log.read_text())
    assert res["outcome"] == "answered" and res["reason"] == "hangup", res
    assert res["audio"]["packets_received"] > 50, res["audio"]
    assert proc.poll() is None


# --- 2. a worker never squeezes in a call above its limit --------------------------------------
async def test_worker_refuses_a_call_above_its_limit(make_client: Factory, tmp_path: Path) -> None:
    client: AppClient = await make_client(calls={"ring_timeout_s": 20.0})
    assert client.app is not None
    offers: list[MediaEndpoint] = []
    sockets: list[Ws] = []
    async with running_carrier(tmp_path / "carrier", sip={"ring_timeout_s": 20.0}) as carrier:
        trunk = PyVoipTrunk(TrunkConfig(server_port=carrier.udp_port))
        worker = BridgeWorker(str(client.make_url("/")), client.app[GATEWAY_SECRET], trunk,
                              name="tight", max_calls=2, backoff_max_s=1.0)
        await refuse_above_limit(client, carrier, worker, offers, sockets)


async def refuse_above_limit(client: AppClient, carrier: Carrier, worker: BridgeWorker,
                             offers: list[MediaEndpoint], sockets: list[Ws]) -> None:
    try:
        await worker.start()
        await worker.wait_ready(10)
        worker.max_calls = 1  # the server was told capacity 2: it will route a second call here

        async def place(user: str) -> tuple[Ws, str]:
            ws = await Ws.open(client, await register(client, user))
            await give_credit(client, user)
            sockets.append(ws)
            ep = MediaEndpoint(name=user)
            offers.append(ep)
            cid = new_call_id()
            await ws.send({"type": "invite", "call_id": cid, "to": RINGS, "media": ["audio"],
                           "sdp": await ep.create_offer()})
            return ws, cid

        alice, first = await place("alice")
        # the first call reached the phone network (the carrier rings it)
        await until(lambda: carrier.status()["calls"] == 1, 10, "the first call at the carrier")
        assert carrier.status()["calls"] == 1 and list(worker.calls) == [first]

        bob, second = await place("bob")
        ended = await bob.expect("call_ended", timeout=5, call_id=second)
        assert ended["reason"] == "congestion" and ended.get("q850_cause") == 34, ended
        assert ended.get("sip_code") is None and "capacity" in str(ended.get("detail")), ended
        assert worker.refused == 1
        # A negative: give a wrongly forwarded INVITE the time to reach the carrier (loopback: ms).
        await asyncio.sleep(0.5)
        assert carrier.status()["calls"] == 1, "the second call must never reach the phone network"
        assert list(worker.calls) == [first]

        # the first call still proceeds: nothing ended it, it is still the worker's
        await alice.no_message("call_ended", wait=0.5)
        assert first in worker.calls and not worker.calls[first].sm.ended
    finally:
        await worker.stop()
        for ws in sockets:
            await ws.ws.close()
        for ep in offers:
            await ep.close()

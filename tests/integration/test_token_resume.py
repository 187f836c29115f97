"""A real `jego serve` restarted on its data dir: clients resume with their token (no password,
no argon2), and the served process applies `[signalling] gc_*` (issue 12, idle clients).

The timing of many clients is scripts/bench_idle_clients.py's; here only the behaviour."""

from __future__ import annotations

import asyncio
import random
import urllib.request

from jego_call.client import Backoff, JegoClient
from tests.conftest import ServerFactory, make_user
from tests.servers import free_port


def metrics(url: str) -> dict[str, float]:
    with urllib.request.urlopen(f"{url}/metrics", timeout=10) as res:
        text = res.read().decode()
    out = {}
    for line in text.splitlines():
        if line and not line.startswith("#"):
            key, _, val = line.rpartition(" ")
            out[key] = float(val)
    return out


def test_token_resumes_after_a_restart_without_a_login(server_factory: ServerFactory) -> None:
    port = free_port()
    server = server_factory(["--no-carrier", "--no-bridge", "--port", str(port)])
    token = make_user(server, "alice")                 # the one argon2 hash of this test
    assert metrics(server.url)["jego_password_hashes_total"] == 1

    async def run() -> None:
        async with JegoClient(server.url) as c:
            c.token = token
            assert (await c.connect())["username"] == "alice"
            old_pid = server.proc.pid
            server.stop()                              # every socket drops; nothing listens now
            await asyncio.wait_for(c.wait_closed(), 10)
            delays: list[float] = []

            async def sleep(d: float) -> None:       # the back-off's delays, really waited
                delays.append(d)
                await asyncio.sleep(d)

            resume = asyncio.ensure_future(c.reconnect(Backoff(random.Random(7), base_s=0.2, cap_s=1.0),
                                                       sleep=sleep))
            await asyncio.sleep(0.5)   # a negative: half a second of refused tries, and it has not given up
            assert not resume.done()                   # refused while the server is down: still trying
            await asyncio.to_thread(server.restart)    # same data dir (the token key) and port
            hello = await asyncio.wait_for(resume, 30)
            assert hello["type"] == "auth_ok" and hello["username"] == "alice"
            assert server.proc.pid != old_pid and server.proc.poll() is None   # a new process answered
            assert c.reconnect_attempts >= 2 and len(delays) == c.reconnect_attempts
            assert all(0 <= d <= 1.0 for d in delays)
            await c.ping()                             # the resumed socket carries the protocol
            assert (await c.wait_for("pong", timeout=10))["type"] == "pong"

    asyncio.run(run())
    after = metrics(server.url)
    assert after["jego_password_hashes_total"] == 0    # the restarted server checked no password


def test_served_process_freezes_its_start_up_objects(server_factory: ServerFactory) -> None:
    tuned = server_factory(JEGO_SIGNALLING_GC_THRESHOLD="[5000, 20, 10]")
    m = metrics(tuned.url)
    assert m["jego_gc_frozen_objects"] > 10_000        # modules, the app, its routes: out of the collector's view
    assert [m[f'jego_gc_threshold{{generation="{g}"}}'] for g in "012"] == [5000, 20, 10]
    assert m['jego_gc_collections_total{generation="2"}'] >= 1   # the collection before the freeze, timed
    assert m['jego_gc_pause_seconds_total{generation="2"}'] > 0
    plain = server_factory(JEGO_SIGNALLING_GC_FREEZE_S="0")
    m = metrics(plain.url)
    assert m["jego_gc_frozen_objects"] == 0            # gc_freeze_s = 0: Python's defaults
    assert [m[f'jego_gc_threshold{{generation="{g}"}}'] for g in "012"] == [700, 10, 10]

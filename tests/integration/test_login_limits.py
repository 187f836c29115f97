"""The doors of /api/login and /api/register on a real aiohttp server (127.0.0.1): lockout
with 429 and Retry-After, per-source limits, and the bounded hasher."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

from jego_call.signalling.keys import LOGIN_DOORS
from tests.helpers import until

from .conftest import Factory
from .sigclient import PASSWORD, AppClient, register


async def login(client: AppClient, user: str, password: str) -> tuple[int, Any, dict[str, str]]:
    res = await client.post("/api/login", json={"username": user, "password": password})
    return res.status, await res.json(), dict(res.headers)


async def test_200_wrong_passwords_for_one_account_are_locked_out(make_client: Factory) -> None:
    client = await make_client(auth={"lockout_base_s": 2.0})
    await register(client, "victim")
    doors = client.app[LOGIN_DOORS]
    hashed_before = doors.gate.stats["hashes"]
    sem = asyncio.Semaphore(20)

    async def attempt(i: int) -> tuple[int, Any, dict[str, str]]:
        async with sem:
            return await login(client, "victim", f"wrong-password-{i}")

    results = await asyncio.gather(*(attempt(i) for i in range(200)))
    codes = [r[0] for r in results]
    assert codes.count(401) == 5 and codes.count(429) == 195, codes
    for status, body, headers in results:
        if status == 429:
            assert body["error"]["code"] == "rate_limited" and int(headers["Retry-After"]) >= 1
            assert "wrong" not in body["error"]["message"].lower()          # the lockout is not "wrong password"
            assert body["error"]["retry_after"] == int(headers["Retry-After"])
        else:
            assert body["error"] == {"code": "auth_failed", "message": "wrong username or password"}
    assert doors.gate.stats["hashes"] - hashed_before == 5                 # 195 attempts cost no hash
    # the right password is refused too while locked, with the same words
    status, body, headers = await login(client, "victim", PASSWORD)
    assert status == 429 and "Too many failed logins for this account" in body["error"]["message"]
    await asyncio.sleep(int(headers["Retry-After"]) + 0.2)   # real time is the subject: the lockout runs out
    # the next five failures lock it for twice as long
    for i in range(5):
        assert (await login(client, "victim", f"x-{i}-wrong"))[0] == 401
    status, _, headers = await login(client, "victim", PASSWORD)
    assert status == 429 and int(headers["Retry-After"]) == 4
    await asyncio.sleep(4.2)   # real time is the subject: the doubled lockout runs out
    status, body, _ = await login(client, "victim", PASSWORD)
    assert status == 200 and body["username"] == "victim"
    # unknown names behave exactly like real ones
    unknown = [(await login(client, "nobody-here", f"pw-{i}-wrong"))[0] for i in range(7)]
    assert unknown == [401] * 5 + [429] * 2


async def test_per_source_limits(make_client: Factory) -> None:
    client = await make_client(auth={"login_source_failures": 6, "login_source_failures_per_s": 0.01,
                                     "register_source_burst": 3, "register_source_per_s": 0.01})
    for name in ("alice", "bob", "carol"):
        await register(client, name)
    res = await client.post("/api/register", json={"username": "dave", "password": PASSWORD})
    body = await res.json()
    assert res.status == 429 and body["error"]["code"] == "rate_limited" and int(res.headers["Retry-After"]) >= 60
    assert "new accounts" in body["error"]["message"]
    # six wrong passwords spread over accounts exhaust this address's failures
    for i in range(6):
        assert (await login(client, f"user{i}", "wrong-password"))[0] == 401
    status, body, headers = await login(client, "alice", PASSWORD)
    assert status == 429 and "from your network" in body["error"]["message"] and int(headers["Retry-After"]) > 1


async def test_the_hasher_is_bounded_and_serves_clean_logins_first(make_client: Factory) -> None:
    client = await make_client(auth={"hash_cpu_share": 0.2, "hash_burst_s": 0.3, "hash_queue": 8,
                                     "login_source_burst": 1000, "login_source_failures": 1000,
                                     "lockout_after": 1000})
    await register(client, "alice")
    doors = client.app[LOGIN_DOORS]
    for i in range(3):                                   # make the flood's account suspect
        assert (await login(client, "target", f"wrong-{i}-pw"))[0] == 401
    finished: list[tuple[str, int]] = []

    async def timed(user: str, pw: str) -> tuple[int, Any, dict[str, str]]:
        r = await login(client, user, pw)
        finished.append((user, r[0]))
        return r

    flood = [asyncio.ensure_future(timed("target", f"flood-{i}-pw")) for i in range(30)]
    gate = doors.gate   # the flood is queued (and mostly refused): all 30 are answered, waiting or hashing
    await until(lambda: len(finished) + gate.waiting >= 30 - gate.workers, 10, "the flood at the hasher")
    status, body, _ = await timed("alice", PASSWORD)
    rest = await asyncio.gather(*flood)
    assert status == 200
    codes = [r[0] for r in rest]
    assert set(codes) <= {401, 429} and codes.count(429) >= 30 - 8 - 1       # the queue holds 8
    assert all("busy" in r[1]["error"]["message"] for r in rest if r[0] == 429)
    # alice overtook the queued flood: only the hash already running was judged before her
    before = finished[: finished.index(("alice", 200))]
    assert codes.count(401) >= 6 and sum(1 for _, c in before if c == 401) <= 1, finished
    assert doors.gate.stats["busy"] >= 20


async def test_the_hasher_runs_at_a_lower_priority(client: AppClient) -> None:
    import os
    from pathlib import Path
    await register(client, "alice")                       # one hash: the pool's thread exists now

    def argon2_threads() -> list[tuple[int, str]]:
        out = []
        for task in Path(f"/proc/{os.getpid()}/task").iterdir():
            if (task / "comm").read_text().strip() == "argon2":
                stat = (task / "stat").read_text().rsplit(")", 1)[1].split()
                cpus = next(line.split(":")[1].strip() for line in (task / "status").read_text().splitlines()
                            if line.startswith("Cpus_allowed_list"))
                out.append((int(stat[16]), cpus))         # field 19 of /proc/PID/task/TID/stat: nice
        return out

    threads = await asyncio.to_thread(argon2_threads)
    assert threads and all(nice == 10 for nice, _ in threads)
    assert all(cpus.isdigit() for _, cpus in threads)     # pinned to one CPU
    assert os.getpriority(os.PRIO_PROCESS, 0) == 0        # the event loop's thread is untouched


async def test_a_client_that_leaves_costs_no_hash(tmp_path: Path) -> None:
    """Fire-and-disconnect floods: a login whose client has gone is dropped before hashing.
    Served by an AppRunner as `jego serve` does (aiohttp then does not cancel the handler of a
    client that hung up; TestServer would)."""
    import aiohttp
    from aiohttp import web

    from jego_call.config import load_config
    from jego_call.signalling.server import create_app
    cfg = load_config(None, environ={}, overrides={
        "data": {"dir": str(tmp_path / "d")},
        "auth": {"hash_cpu_share": 0.2, "hash_burst_s": 0.3, "lockout_after": 1000, "login_source_failures": 1000}})
    app = create_app(cfg)
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
    url = f"http://127.0.0.1:{port}/api/login"
    doors = app[LOGIN_DOORS]
    try:
        async with aiohttp.ClientSession() as http:
            async def one(i: int) -> int:
                async with http.post(url, json={"username": f"ghost{i}", "password": "wrong-password"}) as res:
                    return res.status

            tasks = [asyncio.ensure_future(one(i)) for i in range(10)]
            await until(lambda: doors.gate.waiting >= 8, 20, "8 queued")    # queued behind the first hash
            for t in tasks[1:]:
                t.cancel()                             # the clients hang up
            await asyncio.gather(*tasks, return_exceptions=True)
            await until(lambda: doors.gate.waiting == 0 and doors.gate.stats["gone"] >= 8, 20, "the queue judged")
            assert doors.gate.stats["gone"] >= 8 and doors.gate.stats["hashes"] <= 2, doors.gate.stats
            assert await one(0) == 401                 # and the door still works
    finally:
        await runner.cleanup()

"""Benchmark: the cost of billing a phone call, and how fast a login flood can guess.

Part 1 (ledger): `Billing.authorise` / `answered` / `heartbeat` / `settle` on a real SQLite file
(WAL, synchronous=NORMAL, as `jego serve` uses it), for many users with some history in the
ledger; wall time per operation (p50/p99) and CPU per call.

Part 2 (doors): a `jego serve` subprocess (--no-carrier --no-bridge) on 127.0.0.1.
  a) one account from one address: wrong passwords as fast as the server answers; how many are
     judged (argon2) before the lockout, at what rate, and how fast the 429s come after;
  b) a spread flood: wrong passwords for many accounts from 50 addresses (127.0.0.10-59) at
     once; judged attempts per second (the hash gate's bound), 429s, the server's CPU.

Part 3 (the call path): the hub's pure core (HubCore) and its shell's record step
(`Hub._record`: the settlement and the call record in one transaction) on a real SQLite file,
driven through N app-to-phone calls (invite, gateway ringing and accept, 30 s, hangup, record),
once with billing installed as the hub's Ledger and once without (phone calls free): the
difference is what billing adds to a call in the call path (authorise before any SIP, the
credit clock at the answer, settle with the record), CPU per call. No sockets: the signalling
I/O is the same both ways and not part of billing.

Run as root inside a private network namespace (loopback only):
    unshare -n -- bash -c 'ip link set lo up && .venv/bin/python scripts/bench_billing.py'
"""

from __future__ import annotations

import argparse
import asyncio
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import aiohttp  # noqa: E402

from jego_call.accounts import Accounts  # noqa: E402
from jego_call.billing.fraud import FraudConfig  # noqa: E402
from jego_call.billing.ledger import make_ledger  # noqa: E402
from jego_call.billing.policy import Terms  # noqa: E402
from jego_call.billing.service import Billing, load_rate_table  # noqa: E402
from jego_call.calllog import CallLog  # noqa: E402
from jego_call.config import AuthConfig, CallsConfig  # noqa: E402
from jego_call.db import Database, run_sync  # noqa: E402
from jego_call.directory import SqliteDirectory  # noqa: E402
from jego_call.signalling import messages as m  # noqa: E402
from jego_call.signalling.hub import Hub  # noqa: E402
from jego_call.signalling.hub_core import WriteCallRecord  # noqa: E402
from scripts.benchlib import proc_cpu_s, start_server  # noqa: E402

PASSWORD = "correct-horse-9"
NUMBERS = ["+8613800138000", "+861065529988", "+8613012345678", "+8618912345678", "+862161234567"]


def pct(xs: list[float], p: float) -> float:
    xs = sorted(xs)
    return xs[min(len(xs) - 1, int(p / 100 * len(xs)))]


def bench_ledger(users: int, calls: int, history: int) -> dict[str, Any]:
    tmp = Path(tempfile.mkdtemp(prefix="bench-billing-"))
    db = Database.open(tmp / "jego.sqlite3")
    names = [f"u{i}" for i in range(users)]
    with db.conn:  # one SQLite transaction
        db.conn.executemany("INSERT INTO users(username, password_hash, created_at) VALUES (?, 'x', 0)",
                            [(n,) for n in names])
    fraud = FraudConfig(max_calls_per_hour=10**6, distinct_destinations_warning=10**6,
                        distinct_destinations_critical=10**6, sequential_warning=10**6, sequential_critical=10**6)
    # SQLite: Billing's coroutines never wait, run_sync runs each to its end (as the server's loop would)
    b = run_sync(Billing.open(db, load_rate_table(), fraud, Terms()))
    now = time.time() - 86400 * 2
    for n in names:
        run_sync(b.top_up(n, 10**7, "bench", now))
    # history: settled calls in the ledger, older than a day (so the caps see few of them)
    for i in range(history):
        n = names[i % users]
        cid = f"h{i}"
        run_sync(b.authorise(cid, n, NUMBERS[i % len(NUMBERS)], now))
        run_sync(b.answered(cid, now))
        run_sync(b.settle(cid, now, now + 61, now + 61))
        now += 0.001
    times: dict[str, list[float]] = {"authorise": [], "answered": [], "heartbeat": [], "settle": []}
    t = time.time()
    cpu0 = time.process_time()
    for i in range(calls):
        n = names[i % users]
        cid = f"c{i}"
        t0 = time.perf_counter()
        a = run_sync(b.authorise(cid, n, NUMBERS[i % len(NUMBERS)], t))
        t1 = time.perf_counter()
        assert a.ok, a.refusal
        run_sync(b.answered(cid, t))
        t2 = time.perf_counter()
        run_sync(b.heartbeat([cid], t + 2))
        t3 = time.perf_counter()
        s = run_sync(b.settle(cid, t, t + 95, t + 95))
        t4 = time.perf_counter()
        assert s is not None and s.cost > 0
        for k, v in zip(times, (t1 - t0, t2 - t1, t3 - t2, t4 - t3), strict=True):
            times[k].append(v * 1e6)
        t += 0.01
    cpu = time.process_time() - cpu0
    out: dict[str, Any] = {k: {"p50_us": round(statistics.median(v), 1), "p99_us": round(pct(v, 99), 1)}
                           for k, v in times.items()}
    out["cpu_us_per_call"] = round(cpu / calls * 1e6, 1)
    out["users"], out["calls"], out["history"] = users, calls, history
    run_sync(db.close())
    return out


SDP = "v=0\r\no=- 1 1 IN IP4 127.0.0.1\r\ns=-\r\nt=0 0\r\nm=audio 9 UDP/TLS/RTP/SAVPF 111\r\n"


def _call_path(users: int, calls: int, billed: bool) -> dict[str, Any]:
    """CPU per app-to-phone call through HubCore + Hub._record, with or without the ledger."""
    return asyncio.run(_call_path_async(users, calls, billed))


async def _call_path_async(users: int, calls: int, billed: bool) -> dict[str, Any]:
    tmp = Path(tempfile.mkdtemp(prefix="bench-callpath-"))
    db = Database.open(tmp / "jego.sqlite3")
    names = [f"u{i}" for i in range(users)]
    async with db.transaction() as tx:
        for n in names:
            await tx.execute("INSERT INTO users(username, password_hash, created_at) VALUES (?, 'x', 0)", (n,))
    hub = Hub(SqliteDirectory(Accounts(db, b"bench" * 8, AuthConfig())), CallsConfig(), call_log=CallLog(db))
    wall0 = time.time()
    if billed:
        fraud = FraudConfig(max_calls_per_hour=10**6, distinct_destinations_warning=10**6,
                            distinct_destinations_critical=10**6, sequential_warning=10**6,
                            sequential_critical=10**6, max_minutes_per_day=10**6)
        billing = await Billing.open(db, load_rate_table(), fraud, Terms())
        for n in names:
            await billing.top_up(n, 10**7, "bench", wall0 - 86400)
        hub.set_ledger(make_ledger(billing))
    core = hub.core
    now = 1000.0
    for i, n in enumerate(names):
        core.attach(f"s{i}", n, None)
    core.attach_gateway("gw", "gw", 10**6, {"type": "auth_ok"})
    times: list[float] = []

    async def run(cmds: list[Any]) -> None:
        for c in cmds:
            if isinstance(c, WriteCallRecord):
                hub._record(c)  # the shell's own step: settle + record, one transaction
                await hub.drain()

    cpu0 = time.process_time()
    for i in range(calls):
        sid, cid, to = f"s{i % users}", f"bench-call-{i:08d}", NUMBERS[i % len(NUMBERS)]
        wall = wall0 + now - 1000.0
        t0 = time.perf_counter()
        await run(core.handle(sid, m.parse_message({"type": "invite", "call_id": cid, "to": to, "sdp": SDP}),
                              now=now, wall=wall))
        await run(core.handle("gw", m.parse_message({"type": "ringing", "call_id": cid, "sip_code": 180}),
                              now=now, wall=wall))
        await run(core.handle("gw", m.parse_message({"type": "accept", "call_id": cid, "sdp": SDP}), now=now, wall=wall))
        now += 30.0
        wall += 30.0
        await run(core.handle_timer(now=now, wall=wall))
        await run(core.handle(sid, m.parse_message({"type": "hangup", "call_id": cid}), now=now, wall=wall))
        times.append((time.perf_counter() - t0) * 1e6)
        assert cid not in core.calls
    cpu = time.process_time() - cpu0
    if billed:
        row = await db.query_one("SELECT COUNT(*) AS n FROM call_charges WHERE settled_at IS NOT NULL")
        assert row is not None and row["n"] == calls, row
    await db.close()
    return {"cpu_us_per_call": round(cpu / calls * 1e6, 1), "p50_us": round(statistics.median(times), 1),
            "p99_us": round(pct(times, 99), 1)}


def bench_call_path(users: int, calls: int) -> dict[str, Any]:
    free = _call_path(users, calls, billed=False)
    paid = _call_path(users, calls, billed=True)
    return {"calls": calls, "users": users, "free": free, "billed": paid,
            "billing_cpu_us_per_call": round(paid["cpu_us_per_call"] - free["cpu_us_per_call"], 1)}


async def post_login(http: aiohttp.ClientSession, url: str, user: str, pw: str) -> int:
    async with http.post(f"{url}/api/login", json={"username": user, "password": pw}) as res:
        await res.read()
        return res.status


def session(source: str, limit: int = 20) -> aiohttp.ClientSession:
    return aiohttp.ClientSession(connector=aiohttp.TCPConnector(local_addr=(source, 0), limit=limit),
                                 timeout=aiohttp.ClientTimeout(total=300))


async def refusals(url: str, n: int, concurrency: int, pid: int) -> dict[str, Any]:
    """`n` more attempts for the locked account: how fast and how cheaply 429s come."""
    cpu0, t0 = proc_cpu_s(pid), time.monotonic()
    codes: list[int] = []
    async with session("127.0.0.3", concurrency) as http:
        sem = asyncio.Semaphore(concurrency)

        async def one(i: int) -> None:
            async with sem:
                codes.append(await post_login(http, url, "victim", f"more-{i}"))

        await asyncio.gather(*(one(i) for i in range(n)))
    wall, cpu = time.monotonic() - t0, proc_cpu_s(pid) - cpu0
    return {"attempts": n, "refused_429": codes.count(429), "per_s": round(n / wall), "server_cpu_us_each":
            round(cpu / n * 1e6)}


async def one_account(url: str, attempts: int, concurrency: int) -> dict[str, Any]:
    statuses: list[tuple[float, int]] = []
    t0 = time.monotonic()
    async with session("127.0.0.2", concurrency) as http:
        sem = asyncio.Semaphore(concurrency)

        async def one(i: int) -> None:
            async with sem:
                st = await post_login(http, url, "victim", f"guess-{i}")
                statuses.append((time.monotonic() - t0, st))

        await asyncio.gather(*(one(i) for i in range(attempts)))
    judged = [t for t, s in statuses if s == 401]
    refused = [t for t, s in statuses if s == 429]
    lock_at = max(judged) if judged else 0.0
    return {"attempts": attempts, "judged_401": len(judged), "refused_429": len(refused),
            "locked_after_s": round(lock_at, 2), "judged_per_s": round(len(judged) / lock_at, 2) if lock_at else None}


async def spread(url: str, seconds: float, pid: int, rate: float | None) -> dict[str, Any]:
    """50 addresses x 4 requests in flight, each a wrong password for one of many names, for
    `seconds` (at most `rate` requests a second in all, if given); what is still waiting then
    is cancelled."""
    counts: dict[int, int] = {}
    gap = 200 / rate if rate else 0.0

    async def worker(http: aiohttp.ClientSession, k: int, w: int) -> None:
        i = 0
        while True:
            st = await post_login(http, url, f"acct{k}-{w}-{i % 50}", f"pw-{i}")
            counts[st] = counts.get(st, 0) + 1
            i += 1
            if gap:
                await asyncio.sleep(gap)

    async def source(k: int) -> None:
        async with session(f"127.0.0.{10 + k}", 4) as http:
            await asyncio.gather(*(worker(http, k, w) for w in range(4)))

    cpu0, t0 = proc_cpu_s(pid), time.monotonic()
    tasks = [asyncio.ensure_future(source(k)) for k in range(50)]
    await asyncio.sleep(seconds)
    wall = time.monotonic() - t0
    cpu = proc_cpu_s(pid) - cpu0
    for t in tasks:
        t.cancel()
    await asyncio.gather(*tasks, return_exceptions=True)
    return {"rate_limit": rate, "seconds": round(wall, 1), "judged_401_per_s": round(counts.get(401, 0) / wall, 2),
            "refused_429_per_s": round(counts.get(429, 0) / wall, 1), "server_cpu_cores": round(cpu / wall, 2)}


def bench_doors(args: argparse.Namespace) -> dict[str, Any]:
    tmp = Path(tempfile.mkdtemp(prefix="bench-doors-"))
    proc, url = start_server(tmp, JEGO_LOG_LEVEL="WARNING")
    try:
        import urllib.request
        req = urllib.request.Request(f"{url}/api/register", method="POST", headers={"Content-Type": "application/json"},
                                     data=json.dumps({"username": "victim", "password": PASSWORD}).encode())
        urllib.request.urlopen(req, timeout=30).read()
        a = asyncio.run(one_account(url, args.attempts, args.concurrency))
        out: dict[str, Any] = {"one_account": a,
                               "locked_account": asyncio.run(refusals(url, 2000, args.concurrency, proc.pid))}
        for rate in args.spread_rates:
            out[f"spread_{rate or 'unpaced'}"] = asyncio.run(spread(url, args.spread_s, proc.pid, rate or None))
        return out
    finally:
        proc.terminate()
        proc.wait(10)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--users", type=int, default=1000)
    p.add_argument("--calls", type=int, default=2000)
    p.add_argument("--history", type=int, default=20000, help="settled calls in the ledger before measuring")
    p.add_argument("--attempts", type=int, default=200)
    p.add_argument("--concurrency", type=int, default=20)
    p.add_argument("--spread-s", type=float, default=20.0)
    p.add_argument("--spread-rates", type=float, nargs="+", default=[50.0, 0.0],
                   help="requests/s of the spread flood, 0 = as fast as the server answers")
    p.add_argument("--skip-doors", action="store_true")
    p.add_argument("--path-calls", type=int, default=2000, help="calls through the hub (part 3)")
    args = p.parse_args()
    print(json.dumps({"ledger": bench_ledger(args.users, args.calls, args.history)}, indent=1), flush=True)
    print(json.dumps({"call_path": bench_call_path(min(args.users, 200), args.path_calls)}, indent=1), flush=True)
    if not args.skip_doors:
        print(json.dumps(bench_doors(args), indent=1), flush=True)


if __name__ == "__main__":
    main()

"""Idle authenticated WebSocket clients on one `jego serve`, and a reconnect storm after a restart.

    unshare -n -- bash -c 'ip link set lo up && .venv/bin/python scripts/bench_idle_clients.py \\
        [--counts 0,1000,3000,5000,10000] [--pairs 5] [--rate 200] [--seconds 20] \\
        [--gc-freeze-s 10 | --gc-freeze-s 0 (Python's default GC: "before")] [--reconnect [--failover]]'

Users are written straight into a fresh SQLite database (one argon2 hash shared by all, tokens
signed with the data dir's key, exactly as a login would), so setting up 10,000 costs seconds,
not 10,000 logins. Then one `jego serve` (no carrier, no bridge) on a fixed 127.0.0.1 port and,
in the benchmark process, `--pairs` connected calls whose two ends send `ice` messages carrying
their send time at `--rate` a second in total. Idle clients (jego_call.client.JegoClient, one
aiohttp session per worker process) are added by worker processes up to each of `--counts`;
at each count: the server's RSS (per client: over the RSS at 0), its CPU over `--idle-s` with
only the idle clients (heartbeat pings every [signalling] heartbeat_s), its collector's pauses
(jego_gc_* at /metrics) and the relay p50/p99/max between the active pairs.

`--reconnect`: at the last count the server is killed (`kill -9`, every socket drops at once)
and started again on the same data dir and port; every client resumes with its token
(`JegoClient.reconnect`, jittered exponential back-off, no password). Prints the time until all
are back (from the kill and from the new server's first accept), p50/p99 of each client's time
without a connection, the argon2 hashes the new server did (jego_password_hashes: 0 = no login
storm) and its CPU until all were back.

`--reconnect --failover`: two nodes instead of one. A real redis-server and a real PostgreSQL
(tests/servers.py, by PID; PostgreSQL with its durable defaults) and two `jego serve` nodes `a`
and `b` sharing them, the data dir and so the token signing key (as scripts/cluster runs them);
the users are written into PostgreSQL. The idle clients connect to node a and know both nodes
(`JegoClient(urls=[a, b])`); one more user stays on a without ever coming back and one on b
watches its presence. After the counts node a is killed (`kill -9`) and not started again:
every client reconnects (jittered back-off, the kept token) and lands on b. Prints the time
until all are back and on b, p50/p99 offline per client, attempts per client, b's argon2 hashes,
b's CPU until all were back and idle after, b's RSS per client, and when b dropped a's sessions
from the shared directory (Redis `sess:a` and `nodes`, and the watcher told the gone user is
offline), which the issue wants within 10 s. Figures: docs/benchmarks.md "Cluster: idle
clients and reconnect storms".
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import re
import resource
import shutil
import signal
import socket
import sqlite3
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiohttp

HERE = Path(__file__).resolve()
ROOT = HERE.parents[1]
sys.path.insert(0, str(ROOT))

from jego_call.accounts import Accounts, load_shared_secret  # noqa: E402
from jego_call.client import Backoff, JegoClient  # noqa: E402
from jego_call.config import load_config  # noqa: E402
from jego_call.db import PostgresDatabase, open_database  # noqa: E402
from scripts.bench_cluster import SDP, Client, pct  # noqa: E402
from scripts.benchlib import clean_env, proc_cpu_s  # noqa: E402
from tests.servers import RedisServer, postgres_server, redis_server  # noqa: E402


def raise_nofile() -> int:
    """Soft RLIMIT_NOFILE up to the hard limit (inherited by the server and the workers)."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft < hard:
        resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    return hard


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def tree_cpu_s(pid: int) -> float:
    """CPU seconds of `pid` and its live descendants (PostgreSQL: runuser, postmaster, backends)."""
    kids: dict[int, list[int]] = {}
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        kids.setdefault(int(fields[1]), []).append(int(stat.parent.name))
    total, todo = 0.0, [pid]
    while todo:
        p = todo.pop()
        try:  # its own and its reaped children's (utime, stime, cutime, cstime): exited backends count
            f = Path(f"/proc/{p}/stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        total += sum(int(x) for x in f[11:15]) / os.sysconf("SC_CLK_TCK")
        todo.extend(kids.get(p, []))
    return total


def rss_kib(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    return 0


# --- set-up ---------------------------------------------------------------------------------------
def seed_users(data_dir: Path, idle: int, pairs: int,
               db_url: str = "") -> tuple[list[str], list[tuple[str, str, str, str]]]:
    """Create the users in a fresh database (SQLite in `data_dir`, or PostgreSQL at `db_url`):
    (idle tokens, [(a, a's token, b, b's token)]), signed with the key the nodes will load."""
    cfg = load_config(environ={}, overrides={"data": {"dir": str(data_dir)}, "db": {"url": db_url}})
    pw_hash = Accounts.hash_password("bench-pass-1")
    now = time.time()
    idle_names = [f"idle{i:05d}" for i in range(idle)]
    pair_names = [(f"pa{i:03d}", f"pb{i:03d}") for i in range(pairs)]
    users = [(n, pw_hash, now) for n in idle_names + [n for p in pair_names for n in p]]
    contacts = [(x, y, now) for a, b in pair_names for x, y in ((a, b), (b, a))]

    async def write() -> bytes:
        db = await open_database(cfg)  # migrated
        try:
            secret = await load_shared_secret(db, data_dir)  # DATA/secret.key; on PostgreSQL also its table
            if isinstance(db, PostgresDatabase):
                async with db.pool.acquire() as conn:
                    await conn.executemany("INSERT INTO users(username, password_hash, created_at) "
                                           "VALUES ($1, $2, $3)", users)
                    await conn.executemany("INSERT INTO contacts(owner, contact, created_at) "
                                           "VALUES ($1, $2, $3)", contacts)
        finally:
            await db.close()
        if not db_url:
            con = sqlite3.connect(data_dir / "jego.sqlite3")
            with con:
                con.executemany("INSERT INTO users(username, password_hash, created_at) VALUES (?, ?, ?)", users)
                con.executemany("INSERT INTO contacts(owner, contact, created_at) VALUES (?, ?, ?)", contacts)
            con.close()
        return secret

    signer = Accounts(None, asyncio.run(write()), cfg.auth)  # type: ignore[arg-type]  # tokens only
    tokens = [signer.issue_token(n).token for n in idle_names]
    return tokens, [(a, signer.issue_token(a).token, b, signer.issue_token(b).token) for a, b in pair_names]


class Server:
    """One `jego serve` on a fixed port and data dir; `start()` again after `kill()`. `name`:
    its logs' name (NAME1.log, NAME2.log... one per start)."""

    def __init__(self, tmp: Path, port: int, env: dict[str, str], name: str = "serve") -> None:
        self.tmp, self.port, self.env, self.name = tmp, port, env, name
        self.url = f"http://127.0.0.1:{port}"
        self.proc: subprocess.Popen[str] | None = None
        self.runs = 0

    def start(self) -> float:
        """Start and wait for its URL line; returns the time.time() it was ready."""
        self.runs += 1
        log = self.tmp / f"{self.name}{self.runs}.log"
        with open(log, "w") as fh:
            self.proc = subprocess.Popen(
                [sys.executable, "-m", "jego_call.cli.main", "serve", "--port", str(self.port), "--data-dir",
                 str(self.tmp / "data"), "--no-carrier", "--no-bridge"],
                cwd=ROOT, env=clean_env(**self.env), stdout=fh, stderr=subprocess.STDOUT, text=True)
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            if re.search(r"open (http://[0-9.:]+)/", log.read_text()):
                return time.time()
            if self.proc.poll() is not None:
                break
            time.sleep(0.02)
        raise SystemExit(f"server did not start:\n{log.read_text()[-3000:]}")

    @property
    def pid(self) -> int:
        assert self.proc is not None
        return self.proc.pid

    def kill(self) -> None:
        assert self.proc is not None
        self.proc.send_signal(signal.SIGKILL)
        self.proc.wait(15)

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(30)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(5)

    def log_text(self) -> str:
        """The log of the current (or last) run."""
        return (self.tmp / f"{self.name}{self.runs}.log").read_text(errors="replace")

    def warnings(self) -> list[str]:
        out = []
        for n in range(1, self.runs + 1):
            for line in (self.tmp / f"{self.name}{n}.log").read_text(errors="replace").splitlines():
                if "WARNING" in line or "ERROR" in line or "gc:" in line:
                    out.append(f"  {self.name} run {n}: {line[:240]}")
        return out


async def scrape(http: aiohttp.ClientSession, url: str) -> dict[str, float]:
    """/metrics as {"name{labels}": value}."""
    async with http.get(f"{url}/metrics") as r:
        text = await r.text()
    out: dict[str, float] = {}
    for line in text.splitlines():
        if line and not line.startswith("#"):
            key, _, val = line.rpartition(" ")
            try:
                out[key] = float(val)
            except ValueError:
                pass
    return out


def gc_delta(before: dict[str, float], after: dict[str, float]) -> str:
    parts = []
    for g in ("0", "1", "2"):
        n = after.get(f'jego_gc_collections_total{{generation="{g}"}}', 0) - \
            before.get(f'jego_gc_collections_total{{generation="{g}"}}', 0)
        s = after.get(f'jego_gc_pause_seconds_total{{generation="{g}"}}', 0) - \
            before.get(f'jego_gc_pause_seconds_total{{generation="{g}"}}', 0)
        parts.append(f"gen{g} {n:.0f}x {s * 1000:.0f} ms")
    mx = [after.get(f'jego_gc_pause_max_seconds{{generation="{g}"}}', 0) * 1000 for g in "012"]
    return ", ".join(parts) + (f" (longest so far gen0 {mx[0]:.0f} / gen1 {mx[1]:.0f} / gen2 {mx[2]:.0f} ms, "
                               f"frozen {after.get('jego_gc_frozen_objects', 0):.0f})")


# --- idle clients, in worker processes -----------------------------------------------------------
class Worker:
    """A worker process holding idle clients lo..hi of the token file (see `worker_main`)."""

    def __init__(self, proc: asyncio.subprocess.Process, n: int) -> None:
        self.proc, self.n = proc, n

    @classmethod
    async def spawn(cls, urls: list[str], tokens: Path, lo: int, hi: int, base_s: float, cap_s: float) -> Worker:
        proc = await asyncio.create_subprocess_exec(
            sys.executable, str(HERE), "--worker", ",".join(urls), str(tokens), str(lo), str(hi),
            "--backoff-base-s", str(base_s), "--backoff-cap-s", str(cap_s),
            stdin=asyncio.subprocess.PIPE, stdout=asyncio.subprocess.PIPE, cwd=ROOT, env=clean_env(),
            limit=64 * 1024 * 1024)
        return cls(proc, hi - lo)

    async def line(self, timeout: float = 600) -> dict[str, Any]:  # noqa: ASYNC109
        assert self.proc.stdout is not None
        raw = await asyncio.wait_for(self.proc.stdout.readline(), timeout)
        if not raw:
            raise SystemExit("a worker died")
        return dict(json.loads(raw))

    async def ask(self, what: str) -> dict[str, Any]:
        assert self.proc.stdin is not None
        self.proc.stdin.write(f"{what}\n".encode())
        await self.proc.stdin.drain()
        return await self.line()

    async def stop(self) -> None:
        if self.proc.stdin is not None:
            self.proc.stdin.close()
        try:
            await asyncio.wait_for(self.proc.wait(), 60)
        except TimeoutError:
            self.proc.kill()
            await self.proc.wait()


async def worker_main(urls: list[str], token_file: Path, lo: int, hi: int, base_s: float, cap_s: float) -> None:
    """Connect clients lo..hi to urls[0] (knowing all of `urls`); print {"ready"}; keep each
    connected (reconnect() when the server drops it: the next URL each attempt); answer
    "report" on stdin with every reconnect and how many are on each URL; exit at EOF."""
    raise_nofile()
    os.nice(10)  # the clients stand for other machines: the server and the measuring process come first
    tokens = token_file.read_text().split()[lo:hi]  # noqa: ASYNC240  # once, before any socket
    conn = aiohttp.TCPConnector(limit=0)
    http = aiohttp.ClientSession(connector=conn, timeout=aiohttp.ClientTimeout(total=30))
    gate = asyncio.Semaphore(100)
    events: list[tuple[float, float, int]] = []  # (lost at, back at, attempts), time.time()
    up = 0
    failed = 0
    all_tried = asyncio.Event()
    clients: list[JegoClient] = []

    async def one(token: str) -> None:
        nonlocal up, failed
        c = JegoClient(urls=urls, http=http, auto_ringing=False)  # 10 s per attempt, then back-off
        c.token = token
        clients.append(c)
        try:
            async with gate:
                await c.connect()
        except Exception:
            failed += 1
            if up + failed >= len(tokens):
                all_tried.set()
            return
        up += 1
        if up + failed >= len(tokens):
            all_tried.set()
        while True:
            await c.wait_closed()
            lost = time.time()
            up -= 1
            b = Backoff(base_s=base_s, cap_s=cap_s)
            await c.reconnect(b)
            events.append((lost, time.time(), c.reconnect_attempts))
            up += 1

    t0 = time.monotonic()
    _tasks = [asyncio.ensure_future(one(t)) for t in tokens]  # held: the loop keeps weak references only
    if tokens:
        await all_tried.wait()
    print(json.dumps({"ready": up, "failed": failed, "s": round(time.monotonic() - t0, 2)}), flush=True)
    reader = asyncio.StreamReader()
    await asyncio.get_running_loop().connect_read_pipe(lambda: asyncio.StreamReaderProtocol(reader), sys.stdin)
    while line := await reader.readline():
        if line.strip() == b"report":
            on: dict[str, int] = {}
            for c in clients:
                if c.connected:
                    on[c.url] = on.get(c.url, 0) + 1
            print(json.dumps({"up": up, "events": events, "on": on}), flush=True)
    sys.stdout.flush()
    os._exit(0)  # thousands of sockets: the kernel closes them faster than a polite close each


# --- the active pairs ---------------------------------------------------------------------------
async def connect_pairs(http: aiohttp.ClientSession, url: str,
                        pairs: list[tuple[str, str, str, str]]) -> list[tuple[Client, Client, str]]:
    ws_url = url.replace("http://", "ws://") + "/ws"
    calls = []
    for _a, ta, b, tb in pairs:
        ends = []
        for tok in (ta, tb):
            ws = await http.ws_connect(ws_url)
            await ws.send_json({"type": "auth", "token": tok})
            c = Client(ws)
            await c.expect("auth_ok")
            ends.append(c)
        caller, callee = ends
        cid = uuid.uuid4().hex
        await caller.ws.send_json({"type": "invite", "call_id": cid, "to": b, "sdp": SDP})
        await callee.expect("invite")
        await callee.ws.send_json({"type": "accept", "call_id": cid, "sdp": SDP})
        await caller.expect("accept")
        calls.append((caller, callee, cid))
    return calls


async def relay(calls: list[tuple[Client, Client, str]], rate: float, seconds: float) -> tuple[list[float], int]:
    """Send `ice` at `rate`/s in total for `seconds`; (latencies of this round, messages sent)."""
    ends = [(c, cid) for caller, callee, cid in calls for c in (caller, callee)]
    for c, _ in ends:
        c.latencies.clear()
        c.last_seq = -1
    interval = len(ends) / rate
    loop = asyncio.get_running_loop()
    sent: list[int] = []

    async def sender(c: Client, cid: str, offset: float) -> None:
        t0 = loop.time() + offset
        n = 0
        while loop.time() < t0 + seconds:
            await c.ws.send_json({"type": "ice", "call_id": cid,
                                  "candidate": {"candidate": f"{n}@{time.perf_counter()!r}"}})
            n += 1
            await asyncio.sleep(max(0.0, t0 + n * interval - loop.time()))
        sent.append(n)

    await asyncio.gather(*(sender(c, cid, interval * j / len(ends)) for j, (c, cid) in enumerate(ends)))
    for _ in range(40):
        if sum(len(c.latencies) for c, _ in ends) >= sum(sent):
            break
        await asyncio.sleep(0.25)
    return [lat for c, _ in ends for lat in c.latencies], sum(sent)


# --- the run ------------------------------------------------------------------------------------
@dataclass
class Cluster:
    """`--failover`: node a (where the clients start), node b (where they must end), their
    Redis and key prefix, and the watcher pair (a user left on a, who never comes back, and a
    user on b who has them as a contact)."""

    a: Server
    b: Server
    redis: RedisServer
    prefix: str
    watch: tuple[str, str, str, str]
    pg_pid: int = 0


async def presence_of(c: Client, who: str, want: str, timeout: float = 60) -> float:  # noqa: ASYNC109
    """Wait for `who`'s presence `want` on `c`; the time.time() it came."""
    async with asyncio.timeout(timeout):
        while True:
            m = await c.inbox.get()
            if m.get("type") == "presence" and m.get("username") == who and m.get("presence") == want:
                return time.time()


async def measure(args: argparse.Namespace, server: Server, tokens_file: Path,
                  pairs: list[tuple[str, str, str, str]], cluster: Cluster | None = None) -> None:
    counts = [int(x) for x in args.counts.split(",")]
    workers: list[Worker] = []
    urls = [server.url] if cluster is None else [cluster.a.url, cluster.b.url]
    async with aiohttp.ClientSession() as http:
        calls = await connect_pairs(http, server.url, pairs)
        watchers: tuple[Client, Client] | None = None
        if cluster is not None:
            gone_name, gone_token, _w, watch_token = cluster.watch
            gone = await connect_ws(http, cluster.a.url, gone_token)
            # The watcher connects once b knows the user on a, and is told so at its auth (b loads
            # a remote user into its PostgreSQL people cache before its core hears of them).
            await until_redis(cluster, f"{cluster.prefix}:user:{gone_name}")
            await asyncio.sleep(1.0)  # the attach broadcast reaches b (the bus, after the key)
            watcher = await connect_ws(http, cluster.b.url, watch_token)
            await presence_of(watcher, gone_name, "online", 30)
            watchers = (gone, watcher)
            b_base_rss = rss_kib(cluster.b.pid)
        base_rss = rss_kib(server.pid)
        have = 0
        for count in counts:
            if count > have:
                t0 = time.monotonic()
                w = await Worker.spawn(urls, tokens_file, have, count, args.backoff_base_s, args.backoff_cap_s)
                ready = await w.line()
                workers.append(w)
                print(f"+{count - have} idle clients in {time.monotonic() - t0:.1f} s ({ready})", flush=True)
                have = count
            await asyncio.sleep(args.settle)
            m0 = await scrape(http, server.url)
            cpu0, t0 = proc_cpu_s(server.pid), time.monotonic()
            await asyncio.sleep(args.idle_s)
            idle_cpu = (proc_cpu_s(server.pid) - cpu0) / (time.monotonic() - t0)
            m1 = await scrape(http, server.url)
            rss = rss_kib(server.pid)
            per = f"{(rss - base_rss) / count:.1f} KiB/client" if count else "-"
            sessions = m1.get('jego_websocket_sessions{role="user"}', 0)
            lat, sent = await relay(calls, args.rate, args.seconds)
            m2 = await scrape(http, server.url)
            still = m2.get('jego_websocket_sessions{role="user"}', 0)
            if still < sessions:  # a worker starved of CPU misses its pongs: the server drops its sockets
                print(f"        WARNING: {sessions - still:.0f} sessions dropped during this step "
                      f"(heartbeat pongs late?): its figures are not of {count} clients", flush=True)
            print(f"{count:6d} idle ({sessions:.0f} sessions): RSS {rss / 1024:.0f} MiB ({per}), idle CPU "
                  f"{idle_cpu:.2f} cores; GC while idle {args.idle_s:g} s: {gc_delta(m0, m1)}, frozen at its start "
                  f"{m0.get('jego_gc_frozen_objects', 0):.0f}", flush=True)
            print(f"        relay {len(lat)}/{sent} at {args.rate:g}/s: p50 {pct(lat, 50):.2f} ms, "
                  f"p99 {pct(lat, 99):.2f} ms, max {max(lat) * 1000:.1f} ms, mean "
                  f"{statistics.fmean(lat) * 1000:.2f} ms; GC during relay: {gc_delta(m1, m2)}", flush=True)
        for caller, callee, _ in calls:
            for c in (caller, callee):
                c.task.cancel()
                await c.ws.close()
        if args.reconnect and cluster is not None and watchers is not None:
            await failover(cluster, http, workers, have, watchers, b_base_rss, args.idle_s)
        elif args.reconnect:
            await storm(server, http, workers, have)
    for w in workers:
        await w.stop()


async def until_redis(cluster: Cluster, key: str, timeout: float = 30) -> None:  # noqa: ASYNC109
    """Until `key` exists in the cluster's Redis."""
    import redis.asyncio as aioredis

    r = aioredis.from_url(cluster.redis.url)
    try:
        async with asyncio.timeout(timeout):
            while True:  # polled: Redis says nothing when a key comes
                if await r.exists(key):
                    return
                await asyncio.sleep(0.05)
    finally:
        await r.aclose()


async def connect_ws(http: aiohttp.ClientSession, url: str, token: str) -> Client:
    ws = await http.ws_connect(url.replace("http://", "ws://") + "/ws")
    await ws.send_json({"type": "auth", "token": token})
    c = Client(ws)
    await c.expect("auth_ok")
    return c


async def failover(cluster: Cluster, http: aiohttp.ClientSession, workers: list[Worker], n: int,
                   watchers: tuple[Client, Client], b_base_rss: int, idle_s: float) -> None:
    """kill -9 node a (for good); until every client is back, on node b; b's cost; when b
    dropped a's sessions from the shared directory."""
    import redis.asyncio as aioredis

    a, b = cluster.a, cluster.b
    gone_name = cluster.watch[0]
    r = aioredis.from_url(cluster.redis.url)
    p = cluster.prefix
    assert await r.sismember(f"{p}:nodes", "a") and await r.hlen(f"{p}:sess:a") >= n, "a's sessions not in Redis"
    m0 = await scrape(http, b.url)
    b_rss_at_kill = rss_kib(b.pid)  # b's view of a's sessions (the directory) included
    others = {"redis-server": cluster.redis.server.pid or 0, "PostgreSQL": cluster.pg_pid,
              "the clients' workers": 0}
    others_cpu0 = {k: tree_cpu_s(v) if v else sum(proc_cpu_s(w.proc.pid) for w in workers)
                   for k, v in others.items()}
    cpu0 = proc_cpu_s(b.pid)
    t_kill = time.time()
    a.kill()
    watcher_told = asyncio.ensure_future(presence_of(watchers[1], gone_name, "offline", 120))

    async def directory_dropped() -> float:
        while True:  # polled: Redis says nothing when a key goes
            if not (await r.exists(f"{p}:sess:a") or await r.sismember(f"{p}:nodes", "a")):
                return time.time()
            await asyncio.sleep(0.05)

    dropped = asyncio.ensure_future(directory_dropped())
    deadline = time.monotonic() + 300
    while True:  # every client has seen its drop and is back (right after the kill, none has seen it yet)
        reports = [await w.ask("report") for w in workers]
        up = sum(int(rep["up"]) for rep in reports)
        if (up >= n and sum(len(rep["events"]) for rep in reports) >= n) or time.monotonic() > deadline:
            break
        await asyncio.sleep(0.5)
    t_all = time.time()
    cpu = proc_cpu_s(b.pid) - cpu0
    others_cpu = {k: (tree_cpu_s(v) if v else sum(proc_cpu_s(w.proc.pid) for w in workers)) - others_cpu0[k]
                  for k, v in others.items()}
    events = [e for rep in reports for e in rep["events"]]
    on: dict[str, int] = {}
    for rep in reports:
        for url, k in rep["on"].items():
            on[url] = on.get(url, 0) + int(k)
    backs = [e[1] for e in events]
    gaps = sorted(e[1] - e[0] for e in events)
    attempts = [e[2] for e in events]
    last = max(backs) if backs else float("nan")
    m1 = await scrape(http, b.url)
    b_sessions = m1.get('jego_websocket_sessions{role="user"}', 0)
    print(f"failover storm: {up}/{n} back, {on.get(b.url, 0)} of them on node b and {on.get(a.url, 0)} on a; "
          f"all back {last - t_kill:.1f} s after the kill of node a", flush=True)
    print(f"        per client without a connection: p50 {statistics.median(gaps):.2f} s, p99 "
          f"{gaps[min(len(gaps) - 1, int(0.99 * len(gaps)))]:.2f} s, max {gaps[-1]:.2f} s; attempts per client "
          f"mean {statistics.fmean(attempts):.2f}, max {max(attempts)}", flush=True)
    print(f"        node b: argon2 hashes {m0.get('jego_password_hashes_total', -1):.0f} before the kill, "
          f"{m1.get('jego_password_hashes_total', -1):.0f} after; user sessions "
          f"{b_sessions:.0f}; CPU {cpu:.1f} s from the kill until all back "
          f"({cpu / max(0.1, t_all - t_kill):.2f} cores); meanwhile "
          + ", ".join(f"{k} {v:.1f} s" for k, v in others_cpu.items()), flush=True)
    marks = [5, 10, 20, 30, 45, 60, 90]
    print("        back after the kill: " + ", ".join(
        f"{sum(1 for x in backs if x - t_kill <= t)} by {t} s" for t in marks), flush=True)
    try:
        t_dropped = await asyncio.wait_for(dropped, 60)
        t_told = await asyncio.wait_for(watcher_told, 60)
        print(f"        a's sessions dropped from the shared directory (Redis {p}:sess:a and {p}:nodes) "
              f"{t_dropped - t_kill:.1f} s after the kill; the watcher on b told {gone_name} (left on a) is offline "
              f"{t_told - t_kill:.1f} s after it", flush=True)
    except TimeoutError:
        print("        WARNING: node a's sessions were not dropped within 60 s after all were back", flush=True)
    on_a = on_b = 0
    async for key in r.scan_iter(match=f"{p}:user:idle*", count=1000):
        for node in (await r.hgetall(key)).values():
            on_a += node == b"a"
            on_b += node == b"b"
    print(f"        the directory now: {on_b} sessions of idle users on b, {on_a} on a", flush=True)
    await asyncio.sleep(5)  # the storm's garbage and buffers settle
    cpu1, t1 = proc_cpu_s(b.pid), time.monotonic()
    await asyncio.sleep(idle_s)
    idle_cpu = (proc_cpu_s(b.pid) - cpu1) / (time.monotonic() - t1)
    rss = rss_kib(b.pid)
    print(f"        node b holding them: RSS {rss / 1024:.0f} MiB ({(rss - b_base_rss) / max(1, n):.1f} KiB/client over "
          f"its {b_base_rss / 1024:.0f} MiB before any client; {b_rss_at_kill / 1024:.0f} MiB at the kill), idle CPU {idle_cpu:.2f} cores over {idle_s:g} s", flush=True)
    for line in b.log_text().splitlines():
        if "node a is gone" in line:
            print(f"        b's log: {line[:200]}", flush=True)
    for c in watchers:
        c.task.cancel()
        await c.ws.close()
    await r.aclose()


async def storm(server: Server, http: aiohttp.ClientSession, workers: list[Worker], n: int) -> None:
    """kill -9, start again on the same port, until every client is back."""
    t_kill = time.time()
    server.kill()
    t_up = await asyncio.to_thread(server.start)
    cpu0 = proc_cpu_s(server.pid)
    deadline = time.monotonic() + 300
    while True:  # every client has seen its drop and is back
        reports = [await w.ask("report") for w in workers]
        up = sum(int(r["up"]) for r in reports)
        if (up >= n and sum(len(r["events"]) for r in reports) >= n) or time.monotonic() > deadline:
            break
        await asyncio.sleep(0.5)
    cpu = proc_cpu_s(server.pid) - cpu0
    events = [e for r in reports for e in r["events"]]
    backs = [e[1] for e in events]
    gaps = sorted(e[1] - e[0] for e in events)
    attempts = [e[2] for e in events]
    m = await scrape(http, server.url)
    back_sessions = m.get('jego_websocket_sessions{role="user"}', 0)
    last = max(backs) if backs else float("nan")
    print(f"reconnect storm: {up}/{n} back; all back {last - t_kill:.1f} s after the kill, {last - t_up:.1f} s after "
          f"the new server was up (it took {t_up - t_kill:.1f} s to start)", flush=True)
    print(f"        per client without a connection: p50 {statistics.median(gaps):.2f} s, p99 "
          f"{gaps[min(len(gaps) - 1, int(0.99 * len(gaps)))]:.2f} s, max {gaps[-1]:.2f} s; attempts per client "
          f"mean {statistics.fmean(attempts):.2f}, max {max(attempts)}", flush=True)
    print(f"        new server: argon2 hashes {m.get('jego_password_hashes_total', -1):.0f}, "
          f"sessions {back_sessions:.0f}, CPU {cpu:.1f} s "
          f"({cpu / max(0.1, last - t_up):.2f} cores until all back), RSS {rss_kib(server.pid) / 1024:.0f} MiB",
          flush=True)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--counts", default="0,1000,3000,5000,10000", help="idle client counts, rising")
    ap.add_argument("--pairs", type=int, default=5, help="active calls whose ends exchange messages")
    ap.add_argument("--rate", type=float, default=200.0, help="relayed messages a second, in total")
    ap.add_argument("--seconds", type=float, default=20.0, help="relay window at each count")
    ap.add_argument("--idle-s", type=float, default=10.0, help="idle window (CPU, GC) at each count")
    ap.add_argument("--settle", type=float, default=5.0, help="wait after connecting, before measuring")
    ap.add_argument("--gc-freeze-s", default=None, help="[signalling] gc_freeze_s for the server (0: Python's GC)")
    ap.add_argument("--gc-full-s", default=None, help="[signalling] gc_full_s (unfreeze and collect all this often)")
    ap.add_argument("--gc-threshold", default=None, help='[signalling] gc_threshold, e.g. "[7000,10,10]"')
    ap.add_argument("--reconnect", action="store_true", help="then kill -9 and restart the server: the storm")
    ap.add_argument("--failover", action="store_true",
                    help="with --reconnect: two nodes on redis-server + PostgreSQL; kill -9 node a, clients move to b")
    ap.add_argument("--backoff-base-s", type=float, default=1.0, help="clients' Backoff base_s")
    ap.add_argument("--backoff-cap-s", type=float, default=10.0, help="clients' Backoff cap_s")
    ap.add_argument("--log-dir", type=Path, help="keep the server's logs here")
    ap.add_argument("--worker", nargs=4, metavar=("URL", "TOKENS", "LO", "HI"), help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.worker:
        url, tokens, lo, hi = args.worker
        from jego_call.aio import run

        run(worker_main(url.split(","), Path(tokens), int(lo), int(hi), args.backoff_base_s, args.backoff_cap_s))
        return 0
    if args.failover and not args.reconnect:
        ap.error("--failover is a kind of --reconnect: give both")
    print(f"nofile limit {raise_nofile()}; load: {os.getloadavg()}", flush=True)
    counts = [int(x) for x in args.counts.split(",")]
    with tempfile.TemporaryDirectory() as d, contextlib.ExitStack() as stack:
        tmp = Path(d)
        env = {"JEGO_SIGNALLING_RATE_PER_S": "1000", "JEGO_SIGNALLING_RATE_BURST": "1000"}
        redis = None
        if args.failover:  # the servers a cluster shares (stopped by PID when the stack closes)
            redis = stack.enter_context(redis_server(tmp))
            pg = stack.enter_context(postgres_server(tmp, durable=True))
            env.update(JEGO_CLUSTER_REDIS_URL=redis.url, JEGO_CLUSTER_KEY_PREFIX="jego", JEGO_DB_URL=pg.url)
            print(f"redis-server {redis.url} (pid {redis.server.pid}), PostgreSQL {pg.url} (pid {pg.server.pid})",
                  flush=True)
        t0 = time.monotonic()
        tokens, pairs = seed_users(tmp / "data", max(counts), args.pairs + (1 if args.failover else 0),
                                   env.get("JEGO_DB_URL", ""))
        (tmp / "tokens").write_text("\n".join(tokens))
        print(f"{len(tokens)} idle users and {len(pairs)} pairs created in {time.monotonic() - t0:.1f} s "
              f"({'PostgreSQL' if args.failover else 'SQLite'})", flush=True)
        if args.gc_freeze_s is not None:
            env["JEGO_SIGNALLING_GC_FREEZE_S"] = args.gc_freeze_s
        if args.gc_full_s is not None:
            env["JEGO_SIGNALLING_GC_FULL_S"] = args.gc_full_s
        if args.gc_threshold is not None:
            env["JEGO_SIGNALLING_GC_THRESHOLD"] = args.gc_threshold
        cluster = None
        if redis is not None:
            server = Server(tmp, free_port(), {**env, "JEGO_CLUSTER_NODE_ID": "a"}, "node-a")
            other = Server(tmp, free_port(), {**env, "JEGO_CLUSTER_NODE_ID": "b"}, "node-b")
            cluster = Cluster(server, other, redis, "jego", pairs.pop(), pg.server.pid or 0)
            servers = [server, other]
        else:
            server = Server(tmp, free_port(), env)
            servers = [server]
        try:
            for srv in servers:
                srv.start()
            asyncio.run(measure(args, server, tmp / "tokens", pairs, cluster))
        finally:
            for srv in servers:
                srv.stop()
                for line in srv.warnings()[:20]:
                    print(line)
            if args.log_dir is not None:
                args.log_dir.mkdir(parents=True, exist_ok=True)
                for log in [*tmp.glob("serve*.log"), *tmp.glob("node-*.log")]:
                    shutil.copy(log, args.log_dir / log.name)
    print(f"load: {os.getloadavg()}", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())

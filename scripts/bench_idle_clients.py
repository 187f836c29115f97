"""Idle authenticated WebSocket clients on one `jego serve`, and a reconnect storm after a restart.

    unshare -n -- bash -c 'ip link set lo up && .venv/bin/python scripts/bench_idle_clients.py \\
        [--counts 0,1000,3000,5000,10000] [--pairs 5] [--rate 200] [--seconds 20] \\
        [--gc-freeze-s 10 | --gc-freeze-s 0 (Python's default GC: "before")] [--reconnect]'

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
storm) and its CPU until all were back. Figures: docs/benchmarks.md "Cluster: idle clients and
reconnect storms".
"""

from __future__ import annotations

import argparse
import asyncio
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
from pathlib import Path
from typing import Any

import aiohttp

HERE = Path(__file__).resolve()
ROOT = HERE.parents[1]
sys.path.insert(0, str(ROOT))

from jego_call.accounts import Accounts, load_secret  # noqa: E402
from jego_call.client import Backoff, JegoClient  # noqa: E402
from jego_call.config import load_config  # noqa: E402
from jego_call.db import open_database, sqlite_path  # noqa: E402
from scripts.bench_cluster import SDP, Client, pct  # noqa: E402
from scripts.benchlib import clean_env, proc_cpu_s  # noqa: E402


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


def rss_kib(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    return 0


# --- set-up ---------------------------------------------------------------------------------------
def seed_users(data_dir: Path, idle: int, pairs: int) -> tuple[list[str], list[tuple[str, str, str, str]]]:
    """Create the users in a fresh database: (idle tokens, [(a, a's token, b, b's token)])."""
    cfg = load_config(environ={}, overrides={"data": {"dir": str(data_dir)}})

    async def migrate() -> None:
        db = await open_database(cfg)
        await db.close()

    asyncio.run(migrate())
    pw_hash = Accounts.hash_password("bench-pass-1")
    now = time.time()
    idle_names = [f"idle{i:05d}" for i in range(idle)]
    pair_names = [(f"pa{i:03d}", f"pb{i:03d}") for i in range(pairs)]
    con = sqlite3.connect(sqlite_path(cfg))
    with con:
        con.executemany("INSERT INTO users(username, password_hash, created_at) VALUES (?, ?, ?)",
                        [(n, pw_hash, now) for n in idle_names + [n for p in pair_names for n in p]])
        con.executemany("INSERT INTO contacts(owner, contact, created_at) VALUES (?, ?, ?)",
                        [(x, y, now) for a, b in pair_names for x, y in ((a, b), (b, a))])
    con.close()
    signer = Accounts(None, load_secret(data_dir), cfg.auth)  # type: ignore[arg-type]  # tokens only
    tokens = [signer.issue_token(n).token for n in idle_names]
    return tokens, [(a, signer.issue_token(a).token, b, signer.issue_token(b).token) for a, b in pair_names]


class Server:
    """One `jego serve` on a fixed port and data dir; `start()` again after `kill()`."""

    def __init__(self, tmp: Path, port: int, env: dict[str, str]) -> None:
        self.tmp, self.port, self.env = tmp, port, env
        self.url = f"http://127.0.0.1:{port}"
        self.proc: subprocess.Popen[str] | None = None
        self.runs = 0

    def start(self) -> float:
        """Start and wait for its URL line; returns the time.time() it was ready."""
        self.runs += 1
        log = self.tmp / f"serve{self.runs}.log"
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

    def warnings(self) -> list[str]:
        out = []
        for n in range(1, self.runs + 1):
            for line in (self.tmp / f"serve{n}.log").read_text(errors="replace").splitlines():
                if "WARNING" in line or "ERROR" in line or "gc:" in line:
                    out.append(f"  serve run {n}: {line[:240]}")
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
    async def spawn(cls, url: str, tokens: Path, lo: int, hi: int, base_s: float, cap_s: float) -> Worker:
        proc = await asyncio.create_subprocess_exec(
            sys.executable, str(HERE), "--worker", url, str(tokens), str(lo), str(hi),
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


async def worker_main(url: str, token_file: Path, lo: int, hi: int, base_s: float, cap_s: float) -> None:
    """Connect clients lo..hi; print {"ready"}; keep each connected (reconnect() when the
    server drops it); answer "report" on stdin with every reconnect; exit at EOF."""
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

    async def one(token: str) -> None:
        nonlocal up, failed
        c = JegoClient(url, http=http, auto_ringing=False)  # 10 s per attempt, then back-off
        c.token = token
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
            print(json.dumps({"up": up, "events": events}), flush=True)
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
async def measure(args: argparse.Namespace, server: Server, tokens_file: Path,
                  pairs: list[tuple[str, str, str, str]]) -> None:
    counts = [int(x) for x in args.counts.split(",")]
    workers: list[Worker] = []
    async with aiohttp.ClientSession() as http:
        calls = await connect_pairs(http, server.url, pairs)
        base_rss = rss_kib(server.pid)
        have = 0
        for count in counts:
            if count > have:
                t0 = time.monotonic()
                w = await Worker.spawn(server.url, tokens_file, have, count, args.backoff_base_s, args.backoff_cap_s)
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
        if args.reconnect:
            await storm(server, http, workers, have)
    for w in workers:
        await w.stop()


async def storm(server: Server, http: aiohttp.ClientSession, workers: list[Worker], n: int) -> None:
    """kill -9, start again on the same port, until every client is back."""
    t_kill = time.time()
    server.kill()
    t_up = await asyncio.to_thread(server.start)
    cpu0 = proc_cpu_s(server.pid)
    deadline = time.monotonic() + 300
    while True:
        reports = [await w.ask("report") for w in workers]
        up = sum(int(r["up"]) for r in reports)
        if up >= n or time.monotonic() > deadline:
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
    ap.add_argument("--backoff-base-s", type=float, default=1.0, help="clients' Backoff base_s")
    ap.add_argument("--backoff-cap-s", type=float, default=10.0, help="clients' Backoff cap_s")
    ap.add_argument("--log-dir", type=Path, help="keep the server's logs here")
    ap.add_argument("--worker", nargs=4, metavar=("URL", "TOKENS", "LO", "HI"), help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.worker:
        url, tokens, lo, hi = args.worker
        from jego_call.aio import run

        run(worker_main(url, Path(tokens), int(lo), int(hi), args.backoff_base_s, args.backoff_cap_s))
        return 0
    print(f"nofile limit {raise_nofile()}; load: {os.getloadavg()}", flush=True)
    counts = [int(x) for x in args.counts.split(",")]
    with tempfile.TemporaryDirectory() as d:
        tmp = Path(d)
        t0 = time.monotonic()
        tokens, pairs = seed_users(tmp / "data", max(counts), args.pairs)
        (tmp / "tokens").write_text("\n".join(tokens))
        print(f"{len(tokens)} idle users and {args.pairs} pairs created in {time.monotonic() - t0:.1f} s", flush=True)
        env = {"JEGO_SIGNALLING_RATE_PER_S": "1000", "JEGO_SIGNALLING_RATE_BURST": "1000"}
        if args.gc_freeze_s is not None:
            env["JEGO_SIGNALLING_GC_FREEZE_S"] = args.gc_freeze_s
        if args.gc_full_s is not None:
            env["JEGO_SIGNALLING_GC_FULL_S"] = args.gc_full_s
        if args.gc_threshold is not None:
            env["JEGO_SIGNALLING_GC_THRESHOLD"] = args.gc_threshold
        server = Server(tmp, free_port(), env)
        server.start()
        try:
            asyncio.run(measure(args, server, tmp / "tokens", pairs))
        finally:
            server.stop()
            for line in server.warnings()[:20]:
                print(line)
            if args.log_dir is not None:
                args.log_dir.mkdir(parents=True, exist_ok=True)
                for log in tmp.glob("serve*.log"):
                    shutil.copy(log, args.log_dir / log.name)
    print(f"load: {os.getloadavg()}", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())

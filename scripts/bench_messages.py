#!/usr/bin/env python3
"""Benchmark: text messages through one `jego serve` process with durable storage.

Two phases, each over real WebSockets on 127.0.0.1, with PAIRS sender -> recipient pairs spread
over PROCS client processes (each pair lives in one process, so its clock times both ends):

1. throughput: every sender keeps WINDOW messages in flight (a new one per ack) until it has
   sent MESSAGES; reports acked messages per second (an ack means committed to SQLite, or with
   --postgres to PostgreSQL) and the
   server's CPU use, plus the delivery latency seen while saturated;
2. latency: all senders together send RATE messages a second for SECONDS; reports the delivery
   latency (sender's send -> recipient's receive over WS) p50 / p99 / max.

Not a test: run it and copy the figures to docs/benchmarks.md (## Messaging).

    .venv/bin/python scripts/bench_messages.py --pairs 20 --messages 500 --window 16 --procs 2 --rate 200
    .venv/bin/python scripts/bench_messages.py ... --postgres     # the same into PostgreSQL
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import multiprocessing as mp
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
import uuid
from pathlib import Path
from typing import Any

import aiohttp
import benchlib  # scripts/ is on sys.path when a script runs
from benchlib import proc_cpu_s

ROOT = Path(__file__).resolve().parents[1]
PASSWORD = "bench-password-1"


def start_server(tmp: Path, db_url: str = "") -> tuple[subprocess.Popen[str], str]:
    return benchlib.start_server(tmp, JEGO_SIGNALLING_RATE_PER_S="100000", JEGO_SIGNALLING_RATE_BURST="100000",
                                 JEGO_LOG_LEVEL="WARNING", JEGO_DB_URL=db_url)


def post(url: str, body: dict[str, Any], token: str | None = None) -> Any:
    req = urllib.request.Request(url, json.dumps(body).encode(), method="POST",
                                 headers={"Content-Type": "application/json"})
    if token:
        req.add_header("Authorization", f"Bearer {token}")
    with urllib.request.urlopen(req, timeout=30) as res:
        return json.loads(res.read())


def make_pairs(url: str, n: int, tag: str) -> list[tuple[str, str]]:
    """n (sender token, recipient name) pairs; recipients get tokens by name later."""
    out = []
    for i in range(n):
        s, r = f"s{tag}{i}", f"r{tag}{i}"
        ts = post(f"{url}/api/register", {"username": s, "password": PASSWORD})["token"]
        post(f"{url}/api/register", {"username": r, "password": PASSWORD})
        post(f"{url}/api/contacts", {"username": r}, ts)
        out.append((ts, r))
    return out


async def open_ws(http: aiohttp.ClientSession, url: str, token: str) -> aiohttp.ClientWebSocketResponse:
    ws = await http.ws_connect(url.replace("http://", "ws://") + "/ws", max_msg_size=0)
    await ws.send_str(json.dumps({"type": "auth", "token": token}))
    while json.loads((await ws.receive()).data)["type"] != "auth_ok":
        pass
    return ws


class Pair:
    def __init__(self, sender: aiohttp.ClientWebSocketResponse, recipient: aiohttp.ClientWebSocketResponse,
                 to: str) -> None:
        self.sender, self.recipient, self.to = sender, recipient, to
        self.sent_at: dict[str, float] = {}
        self.latencies: list[float] = []
        self.acks: asyncio.Queue[str] = asyncio.Queue()
        self.received = 0

    async def read_recipient(self) -> None:
        pending_receipt = 0
        async for frame in self.recipient:
            msg = json.loads(frame.data)
            if msg.get("type") == "message":
                now = time.perf_counter()
                m = msg["message"]
                t0 = self.sent_at.pop(m["client_id"], None)
                if t0 is not None:
                    self.latencies.append(now - t0)
                self.received += 1
                pending_receipt = m["seq"]
                if self.received % 50 == 0:  # cumulative receipts, as a client batches them
                    await self.recipient.send_str(json.dumps({"type": "receipt", "with": m["from"],
                                                              "state": "delivered", "up_to_seq": pending_receipt}))

    async def read_sender(self) -> None:
        async for frame in self.sender:
            msg = json.loads(frame.data)
            if msg.get("type") == "message_ack":
                self.acks.put_nowait(msg["client_id"])
            elif msg.get("type") == "error":
                raise SystemExit(f"server error: {msg}")

    async def send_one(self, i: int) -> None:
        cid = uuid.uuid4().hex
        self.sent_at[cid] = time.perf_counter()
        await self.sender.send_str(json.dumps({"type": "send_message", "client_id": cid, "to": self.to,
                                               "text": f"benchmark message {i} " + "x" * 40}))


async def worker_main(url: str, pairs: list[tuple[str, str]], args: dict[str, Any]) -> dict[str, Any]:
    async with aiohttp.ClientSession() as http:
        live: list[Pair] = []
        for token, to in pairs:
            rt = post(f"{url}/api/login", {"username": to, "password": PASSWORD})["token"]
            live.append(Pair(await open_ws(http, url, token), await open_ws(http, url, rt), to))
        readers = [asyncio.ensure_future(c) for p in live for c in (p.read_recipient(), p.read_sender())]

        async def saturate(p: Pair) -> None:
            for i in range(args["window"]):
                await p.send_one(i)
            for i in range(args["window"], args["messages"]):
                await p.acks.get()
                await p.send_one(i)
            for _ in range(args["window"]):
                await p.acks.get()

        await args_barrier(args)
        t0 = time.perf_counter()
        await asyncio.gather(*(saturate(p) for p in live))
        t_acked = time.perf_counter() - t0
        await wait_received(live, args["messages"])
        t_received = time.perf_counter() - t0
        sat_lat = [x for p in live for x in p.latencies]
        for p in live:
            p.latencies.clear()
            p.received = 0

        # latency phase: a steady rate shared by all senders of all processes
        per_pair_interval = args["procs"] * len(live) / args["rate"]
        count = int(args["seconds"] / per_pair_interval)

        async def steady(p: Pair, offset: float) -> None:
            start = time.perf_counter() + offset
            for i in range(count):
                delay = start + i * per_pair_interval - time.perf_counter()
                if delay > 0:
                    await asyncio.sleep(delay)
                await p.send_one(i)

        await asyncio.gather(*(steady(p, k * per_pair_interval / len(live)) for k, p in enumerate(live)))
        await wait_received(live, count)
        lat = [x for p in live for x in p.latencies]
        for r in readers:
            r.cancel()
        for p in live:
            await p.sender.close()
            await p.recipient.close()
    return {"acked": args["messages"] * len(pairs), "t_acked": t_acked, "t_received": t_received,
            "sat_latencies": sat_lat, "latencies": lat, "steady_sent": count * len(pairs)}


async def wait_received(live: list[Pair], n: int, timeout: float = 120.0) -> None:
    deadline = time.perf_counter() + timeout
    while any(p.received < n for p in live):
        if time.perf_counter() > deadline:
            raise SystemExit(f"messages missing: {[p.received for p in live]} of {n}")
        await asyncio.sleep(0.01)


async def args_barrier(args: dict[str, Any]) -> None:
    """Start together: wait for the wall-clock second the parent chose."""
    delay = args["start_at"] - time.time()
    if delay > 0:
        await asyncio.sleep(delay)


def worker(url: str, pairs: list[tuple[str, str]], args: dict[str, Any], out: Any) -> None:
    try:
        out.put(asyncio.run(worker_main(url, pairs, args)))
    except BaseException as exc:  # report it: the parent must not wait for a dead worker
        out.put({"error": f"{type(exc).__name__}: {exc}"})


def pct(xs: list[float], q: float) -> float:
    xs = sorted(xs)
    return xs[min(len(xs) - 1, int(q * len(xs)))] * 1000


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--server", help="a running server's URL (default: start one on a temp data dir)")
    ap.add_argument("--pairs", type=int, default=20)
    ap.add_argument("--messages", type=int, default=500, help="messages per sender in the throughput phase")
    ap.add_argument("--window", type=int, default=16, help="messages in flight per sender")
    ap.add_argument("--procs", type=int, default=2, help="client processes")
    ap.add_argument("--rate", type=float, default=200.0, help="messages per second in the latency phase")
    ap.add_argument("--seconds", type=float, default=10.0, help="length of the latency phase")
    ap.add_argument("--postgres", action="store_true",
                    help="store in a PostgreSQL started for the run (tests/servers.py, durable: every "
                         "commit flushed, as SQLite's WAL commit is) instead of SQLite")
    a = ap.parse_args()
    tmp = Path(tempfile.mkdtemp(prefix="bench-msg-"))
    with contextlib.ExitStack() as stack:
        db_url = ""
        if a.postgres and a.server is None:
            sys.path.insert(0, str(ROOT))
            from tests.servers import postgres_server

            db_url = stack.enter_context(postgres_server(tmp, durable=True)).url
            print(f"storage: PostgreSQL {db_url}", file=sys.stderr)
        return run(a, tmp, db_url)


def run(a: argparse.Namespace, tmp: Path, db_url: str) -> int:
    proc = None
    url = a.server
    if url is None:
        proc, url = start_server(tmp, db_url)
    tag = uuid.uuid4().hex[:4]
    try:
        pairs = make_pairs(url, a.pairs, tag)
        groups = [pairs[i::a.procs] for i in range(a.procs)]
        args = {"window": a.window, "messages": a.messages, "rate": a.rate, "seconds": a.seconds,
                "procs": a.procs, "start_at": time.time() + 3.0}
        ctx = mp.get_context("spawn")
        out = ctx.Queue()
        samples: list[tuple[float, float]] = []
        stop = threading.Event()

        def sample() -> None:  # the server's CPU seconds, twice a second
            while proc is not None and not stop.wait(0.2):
                samples.append((time.time(), proc_cpu_s(proc.pid)))

        sampler = threading.Thread(target=sample, daemon=True)
        sampler.start()
        ps = [ctx.Process(target=worker, args=(url, g, args, out)) for g in groups if g]
        for p in ps:
            p.start()
        results = [out.get(timeout=600) for _ in ps]
        failed = [r["error"] for r in results if "error" in r]
        if failed:
            raise SystemExit(f"a client process failed: {failed}")
        for p in ps:
            p.join()
        stop.set()
        sampler.join()
    finally:
        if proc is not None:
            proc.terminate()
            proc.wait(10)
    acked = sum(r["acked"] for r in results)
    t_acked = max(r["t_acked"] for r in results)
    t_recv = max(r["t_received"] for r in results)
    sat = [x for r in results for x in r["sat_latencies"]]
    lat = [x for r in results for x in r["latencies"]]
    print(f"pairs {a.pairs}, client processes {a.procs}, window {a.window}, {a.messages} messages per sender")
    print(f"throughput: {acked} messages acked (committed) in {t_acked:.2f} s = {acked / t_acked:.0f} msg/s; "
          f"all received in {t_recv:.2f} s = {acked / t_recv:.0f} msg/s")
    print(f"  delivery latency while saturated: p50 {pct(sat, 0.5):.1f} ms, p99 {pct(sat, 0.99):.1f} ms")
    if samples:
        t_start, t_end = args["start_at"], args["start_at"] + t_acked
        inside = [(t, c) for t, c in samples if t_start <= t <= t_end]
        if len(inside) >= 2:
            busy = (inside[-1][1] - inside[0][1]) / (inside[-1][0] - inside[0][0])
            print(f"  server process CPU while saturated: {busy:.2f} cores "
                  f"({busy / (acked / t_acked) * 1e6:.0f} µs of CPU per message)")
    print(f"latency at {a.rate:g} msg/s for {a.seconds:g} s ({len(lat)} messages): p50 {pct(lat, 0.5):.2f} ms, "
          f"p99 {pct(lat, 0.99):.2f} ms, max {max(lat) * 1000:.2f} ms, mean {statistics.mean(lat) * 1000:.2f} ms")
    return 0


if __name__ == "__main__":
    sys.exit(main())

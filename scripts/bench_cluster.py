"""Cross-node relay latency: call signalling between users on two `jego serve` nodes sharing a
redis-server, against the same on one node.

    .venv/bin/python scripts/bench_cluster.py [--rate 1000] [--seconds 10] [--pairs 10]

Starts redis-server (tests/servers.py, by PID) and two nodes (`a`, `b`) on one data dir. Each
pair is a connected call, the caller on node a, the callee on node b (the call is owned by a);
every `ice` message the callee sends is forwarded by b to the owner a, which relays it to the
caller, and the other way round the owner's `Send` goes to b. Senders send at `--rate` messages
a second in total (half each way), each carrying its send time; the receiver's clock is the
same machine's. Prints p50/p99/max for "cross-node" and, with every client on node a, for "one
node". Figures go to docs/benchmarks.md ("Cluster").
"""

from __future__ import annotations

import argparse
import asyncio
import json
import re
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path
from typing import Any

import aiohttp

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from scripts.benchlib import clean_env, proc_cpu_s  # noqa: E402
from tests.servers import redis_server  # noqa: E402

SDP = "v=0\r\no=- 1 1 IN IP4 127.0.0.1\r\ns=-\r\nt=0 0\r\nm=audio 9 RTP/AVP 0\r\n"


def start_node(tmp: Path, node_id: str, redis_url: str, prefix: str) -> tuple[subprocess.Popen[str], str]:
    log = tmp / f"{node_id}.log"
    env = clean_env(JEGO_CLUSTER_REDIS_URL=redis_url, JEGO_CLUSTER_NODE_ID=node_id, JEGO_CLUSTER_KEY_PREFIX=prefix,
                    JEGO_SIGNALLING_RATE_PER_S="100000", JEGO_SIGNALLING_RATE_BURST="100000",
                    JEGO_AUTH_REGISTER_SOURCE_BURST="1000", JEGO_AUTH_REGISTER_SOURCE_PER_S="1000")
    with open(log, "w") as fh:
        proc = subprocess.Popen([sys.executable, "-m", "jego_call.cli.main", "serve", "--port", "0", "--data-dir",
                                 str(tmp / "data"), "--no-carrier", "--no-bridge"],
                                cwd=ROOT, env=env, stdout=fh, stderr=subprocess.STDOUT, text=True)
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        m = re.search(r"open (http://[0-9.:]+)/", log.read_text())
        if m:
            return proc, m.group(1)
        if proc.poll() is not None:
            break
        time.sleep(0.05)
    raise SystemExit(f"node {node_id} did not start:\n{log.read_text()[-3000:]}")


class Client:
    def __init__(self, ws: aiohttp.ClientWebSocketResponse) -> None:
        self.ws = ws
        self.latencies: list[float] = []
        self.last_seq = -1        # the sender's numbering: a gap or a step back is counted
        self.out_of_order = 0
        self.inbox: asyncio.Queue[dict[str, Any]] = asyncio.Queue()
        self.task = asyncio.get_running_loop().create_task(self._read())

    async def _read(self) -> None:
        async for msg in self.ws:
            if msg.type != aiohttp.WSMsgType.TEXT:
                continue
            data = json.loads(msg.data)
            if data.get("type") == "ice":
                seq, sent = data["candidate"]["candidate"].split("@")
                self.latencies.append(time.perf_counter() - float(sent))
                if int(seq) != self.last_seq + 1:
                    self.out_of_order += 1
                self.last_seq = int(seq)
            else:
                await self.inbox.put(data)

    async def expect(self, kind: str) -> dict[str, Any]:
        while True:
            m = await asyncio.wait_for(self.inbox.get(), 15)
            if m.get("type") == kind:
                return m


async def register(http: aiohttp.ClientSession, url: str, name: str) -> str:
    async with http.post(f"{url}/api/register", json={"username": name, "password": "bench-pass-1"}) as r:
        body = await r.json()
        assert r.status == 201, body
        return str(body["token"])


async def connect(http: aiohttp.ClientSession, url: str, token: str) -> Client:
    ws = await http.ws_connect(url.replace("http://", "ws://") + "/ws")
    await ws.send_json({"type": "auth", "token": token})
    c = Client(ws)
    await c.expect("auth_ok")
    return c


async def run(a_url: str, b_url: str, pairs: int, rate: float, seconds: float, tag: str) -> list[float]:
    async with aiohttp.ClientSession() as http:
        calls: list[tuple[Client, Client, str]] = []
        for i in range(pairs):
            ta = await register(http, a_url, f"{tag}a{i}")
            tb = await register(http, a_url, f"{tag}b{i}")
            async with http.post(f"{a_url}/api/contacts", json={"username": f"{tag}b{i}"},
                                 headers={"Authorization": f"Bearer {ta}"}) as r:
                assert r.status in (200, 201)
            caller = await connect(http, a_url, ta)
            callee = await connect(http, b_url, tb)
            cid = uuid.uuid4().hex
            await asyncio.sleep(0.3)  # the callee's session is known on a
            await caller.ws.send_json({"type": "invite", "call_id": cid, "to": f"{tag}b{i}", "sdp": SDP})
            await callee.expect("invite")
            await callee.ws.send_json({"type": "accept", "call_id": cid, "sdp": SDP})
            await caller.expect("accept")
            calls.append((caller, callee, cid))
        interval = 2 * pairs / rate  # each of the 2*pairs senders sends every `interval` seconds
        loop = asyncio.get_running_loop()

        sent_counts: list[int] = []

        async def sender(c: Client, cid: str, offset: float) -> None:
            t0 = loop.time() + offset
            n = 0
            while loop.time() < t0 + seconds:
                stamp = f"{n}@{time.perf_counter()!r}"
                await c.ws.send_json({"type": "ice", "call_id": cid, "candidate": {"candidate": stamp}})
                n += 1
                await asyncio.sleep(max(0.0, t0 + n * interval - loop.time()))
            sent_counts.append(n)

        k = 2 * pairs
        await asyncio.gather(*(sender(c, cid, interval * j / k) for j, (c, cid) in
                               enumerate([(x, cid) for caller, callee, cid in calls for x in (caller, callee)])))
        expected = sum(sent_counts)
        seen, quiet = -1, 0
        for _ in range(60):  # until all arrived, or nothing more for 3 s (at most 30 s)
            now = sum(len(c.latencies) for caller, callee, _ in calls for c in (caller, callee))
            quiet = quiet + 1 if now == seen else 0
            if now >= expected or quiet >= 6:
                break
            seen = now
            await asyncio.sleep(0.5)
        out = [lat for caller, callee, _ in calls for lat in caller.latencies + callee.latencies]
        to_caller = [lat for caller, _, _ in calls for lat in caller.latencies]
        to_callee = [lat for _, callee, _ in calls for lat in callee.latencies]
        print(f"  to the caller (on a): p50 {pct(to_caller, 50):.2f} ms; to the callee: p50 {pct(to_callee, 50):.2f} ms")
        errors: dict[str, int] = {}
        for caller, callee, _ in calls:
            for c in (caller, callee):
                while not c.inbox.empty():
                    m = c.inbox.get_nowait()
                    key = f"{m.get('type')}:{m.get('code', '')}"
                    errors[key] = errors.get(key, 0) + 1
        if errors:
            print(f"  other messages: {errors}", flush=True)
        bad = sum(c.out_of_order for caller, callee, _ in calls for c in (caller, callee))
        got = sum(len(c.latencies) for caller, callee, _ in calls for c in (caller, callee))
        print(f"  sent {expected}, received {got}; out of order or a gap in a sender's numbering: {bad}", flush=True)
        for caller, callee, _ in calls:
            for c in (caller, callee):
                c.task.cancel()
                await c.ws.close()
        return out


def pct(xs: list[float], p: float) -> float:
    s = sorted(xs)
    return s[min(len(s) - 1, int(p / 100 * len(s)))] * 1000


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--rate", type=float, default=1000.0, help="messages a second, in total")
    ap.add_argument("--seconds", type=float, default=10.0)
    ap.add_argument("--pairs", type=int, default=10)
    args = ap.parse_args()
    with tempfile.TemporaryDirectory() as d:
        tmp = Path(d)
        with redis_server(tmp) as redis:
            prefix = f"b{uuid.uuid4().hex[:8]}"
            a, a_url = start_node(tmp, "a", redis.url, prefix)
            b, b_url = start_node(tmp, "b", redis.url, prefix)
            try:
                for label, second in (("one node", a_url), ("cross-node", b_url)):
                    cpu0 = {p.pid: proc_cpu_s(p.pid) for p in (a, b)}
                    t0 = time.monotonic()
                    lat = asyncio.run(run(a_url, second, args.pairs, args.rate, args.seconds,
                                          "x" if second == b_url else "o"))
                    wall = time.monotonic() - t0
                    cpu = {p.pid: proc_cpu_s(p.pid) - cpu0[p.pid] for p in (a, b)}
                    sent = args.rate * args.seconds
                    print(f"{label:10s}: {len(lat)}/~{sent:.0f} delivered at {args.rate:.0f}/s, "
                          f"p50 {pct(lat, 50):.2f} ms, p99 {pct(lat, 99):.2f} ms, max {max(lat) * 1000:.1f} ms, "
                          f"mean {statistics.fmean(lat) * 1000:.2f} ms; CPU a {cpu[a.pid] / wall:.2f}, "
                          f"b {cpu[b.pid] / wall:.2f} cores", flush=True)
            finally:
                for p in (a, b):
                    p.terminate()
                    p.wait(15)
                for n in ("a", "b"):
                    text = (tmp / f"{n}.log").read_text(errors="replace")
                    for line in text.splitlines():
                        if "WARNING" in line or "ERROR" in line:
                            print(f"  node {n}: {line}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

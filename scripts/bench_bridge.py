#!/usr/bin/env python3
"""Benchmark: N concurrent app -> phone calls through ONE bridge worker process.

Starts `jego serve --no-bridge` (signalling + the simulated carrier, on free 127.0.0.1 ports) and
one `jego bridge` worker process, then for each N places N simultaneous calls from one load
process (N aiortc endpoints playing tests/data/speech_en_48k.wav) to a carrier number that
answers and echoes. Reports per N:

- cpu_per_call_s: CPU-seconds of the bridge process per call-second (all calls connected);
- on_time: the worst call's share of app-bound frames released within 10 ms of their 20 ms slot
  (the bridge logs it per call);
- pesq_min / pesq_p50: narrowband PESQ of the carrier's recording of each call against the
  source resampled to 8 kHz;
- setup_ms p50 / p99: invite -> accept as the caller sees it;
- threads: the bridge process's threads (/proc/PID/task) in the middle of the window.

`--idle S` first measures the worker with no call for S seconds (CPU ms per second, threads).
`--metrics off` starts the worker with `[metrics] enabled = false` (every metrics hook a no-op,
no /metrics); `--scrape S` (with metrics on) GETs the worker's /metrics every S seconds
throughout, as a Prometheus would. With metrics on, `metrics_cpu_share` is the worker's own
jego_bridge_metrics_cpu_seconds_total over its whole CPU in the window (thread CPU of the
counting at scrapes and call ends and of rendering /metrics). The cost of metrics is that
share, and the difference between on and off (docs/benchmarks.md "## Metrics").

`max_ok_calls` is the largest N with on_time >= 99 % and pesq_min >= 3.6 for every call. The
load process shares the machine, so figures are a floor. Not a test: run it (as root inside
`unshare -n` so only loopback exists) and copy the table to docs/benchmarks.md "## Bridge".

    unshare -n -- bash -c 'ip link set lo up && .venv/bin/python scripts/bench_bridge.py --calls 1 4 8 12'
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import re
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from jego_call.client import JegoClient, new_call_id  # noqa: E402
from jego_call.media import analysis  # noqa: E402
from jego_call.media.endpoint import MediaEndpoint, enable_loopback_candidates  # noqa: E402
from jego_call.media.tracks import FileSource  # noqa: E402
from tests.integration.bridge_util import PLAIN, carrier_config, free_port  # noqa: E402

PASSWORD = "bench-password-1"
SPEECH = ROOT / "tests" / "data" / "speech_en_48k.wav"


def env(extra: dict[str, str]) -> dict[str, str]:
    e = {k: v for k, v in os.environ.items() if not k.startswith("JEGO_")}
    e.update(PYTHONUNBUFFERED="1", **extra)
    return e


def proc_cpu_s(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def wait_for(path: Path, pattern: str, proc: subprocess.Popen[str], timeout: float = 30) -> re.Match[str]:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        m = re.search(pattern, path.read_text(errors="replace"))
        if m:
            return m
        if proc.poll() is not None:
            raise SystemExit(f"{proc.args} exited:\n{path.read_text()}")
        time.sleep(0.05)
    raise SystemExit(f"{pattern!r} not seen in {path}")


def register(url: str, name: str) -> None:
    req = urllib.request.Request(f"{url}/api/register", data=json.dumps({"username": name, "password": PASSWORD})
                                 .encode(), method="POST", headers={"Content-Type": "application/json"})
    try:
        urllib.request.urlopen(req, timeout=10).read()
    except urllib.error.HTTPError as exc:
        if exc.code != 409:
            raise


def pct(values: list[float], p: float) -> float:
    s = sorted(values)
    return s[min(len(s) - 1, int(round(p / 100 * (len(s) - 1))))] if s else float("nan")


async def one_call(url: str, user: str, hold_s: float, out: dict[str, Any]) -> None:
    async with JegoClient(url) as client:
        await client.login(user, PASSWORD)
        auth = await client.connect()
        ep = MediaEndpoint(source=FileSource(SPEECH), ice_servers=auth["ice_servers"])
        cid = new_call_id()
        out["call_id"] = cid
        try:
            t0 = time.monotonic()
            await client.invite(cid, PLAIN, await ep.create_offer())
            acc = await client.wait_for("accept", cid, timeout=30)
            out["setup_ms"] = (time.monotonic() - t0) * 1000
            await ep.set_answer(acc["sdp"])
            await ep.wait_connected(15)
            out["connected"] = time.monotonic()
            await asyncio.sleep(hold_s)
            out["hangup"] = time.monotonic()
            await client.hangup(cid)
            await client.wait_for("call_ended", cid, timeout=10)
        finally:
            await ep.close()


def metrics_cpu_s(metrics_url: str | None) -> float | None:
    """The worker's jego_bridge_metrics_cpu_seconds_total (its metrics' own CPU), or None."""
    if metrics_url is None:
        return None
    with urllib.request.urlopen(metrics_url, timeout=5) as r:  # noqa: S310 - loopback
        text = r.read().decode()
    m = re.search(r"(?m)^jego_bridge_metrics_cpu_seconds_total\{[^}]*\} ([0-9.e+-]+)$", text)
    return float(m.group(1)) if m else None


def run(n: int, url: str, bridge: subprocess.Popen[str], bridge_log: Path, data: Path,
        metrics_url: str | None = None) -> dict[str, Any]:
    users = [f"bench{i}" for i in range(n)]
    for u in users:
        register(url, u)
    cdr_path = data / "carrier" / "cdr.jsonl"
    cdr_before = len(cdr_path.read_text().splitlines()) if cdr_path.exists() else 0
    results: list[dict[str, Any]] = [{} for _ in users]
    hold = 17.5

    async def all_calls() -> float:
        task = asyncio.gather(*(one_call(url, u, hold, r) for u, r in zip(users, results, strict=True)))
        # CPU of the bridge over the window when every call is up
        await asyncio.sleep(6.0)
        m0 = await asyncio.to_thread(metrics_cpu_s, metrics_url)
        c0, t0 = proc_cpu_s(bridge.pid), time.monotonic()
        await asyncio.sleep(4.0)
        threads.append(proc_threads(bridge.pid))
        await asyncio.sleep(4.0)
        c1 = proc_cpu_s(bridge.pid)
        cpu = (c1 - c0) / (time.monotonic() - t0)
        m1 = await asyncio.to_thread(metrics_cpu_s, metrics_url)
        if m0 is not None and m1 is not None and c1 > c0:
            share.append((m1 - m0) / (c1 - c0))
        await task
        return cpu

    threads: list[int] = []
    share: list[float] = []
    cpu_per_s = asyncio.run(all_calls())
    time.sleep(1.5)
    log = bridge_log.read_text(errors="replace")
    on_time = [float(m) for cid in (r["call_id"] for r in results)
               for m in re.findall(rf"\[call {cid}\] ended .*frames on time ([0-9.]+)", log)]
    recs = [json.loads(line) for line in cdr_path.read_text().splitlines()[cdr_before:] if line.strip()]
    ref = analysis.resample(*analysis.read_wav(SPEECH), 8000)
    scores = []
    for rec in recs:
        if rec.get("recording"):
            heard, rate = analysis.read_wav(rec["recording"])
            scores.append(analysis.pesq_score(ref, heard, rate, mode="nb"))
    setup = [r["setup_ms"] for r in results if "setup_ms" in r]
    return {"calls": n, "cpu_per_call_s": round(cpu_per_s / n, 4), "on_time_min": min(on_time) if on_time else None,
            "pesq_min": round(min(scores), 2) if scores else None,
            "pesq_p50": round(statistics.median(scores), 2) if scores else None,
            "setup_ms_p50": round(pct(setup, 50)), "setup_ms_p99": round(pct(setup, 99)),
            "recorded": len(scores), "threads": threads[0] if threads else None,
            "metrics_cpu_share": round(share[0], 5) if share else None}


def proc_threads(pid: int) -> int:
    return len(os.listdir(f"/proc/{pid}/task"))


def idle(bridge: subprocess.Popen[str], seconds: float) -> dict[str, Any]:
    """The worker's CPU with no call: ms of CPU per second over `seconds`, and its threads."""
    time.sleep(2.0)
    c0, t0 = proc_cpu_s(bridge.pid), time.monotonic()
    time.sleep(seconds)
    ms = (proc_cpu_s(bridge.pid) - c0) / (time.monotonic() - t0) * 1000
    return {"idle_cpu_ms_per_s": round(ms, 2), "idle_threads": proc_threads(bridge.pid), "seconds": seconds}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--calls", type=int, nargs="+", default=[1, 4, 8, 12])
    ap.add_argument("--app-codec", choices=["opus", "pcmu", "pcma"], default="opus")
    ap.add_argument("--idle", type=float, default=0.0, metavar="S", help="first measure the idle worker for S s")
    ap.add_argument("--metrics", choices=["on", "off"], default="on", help="the worker's [metrics] enabled")
    ap.add_argument("--scrape", type=float, default=0.0, metavar="S",
                    help="scrape the worker's /metrics every S seconds (metrics on)")
    args = ap.parse_args()
    enable_loopback_candidates()
    with tempfile.TemporaryDirectory(prefix="bench-bridge-") as tmp_s:
        if os.environ.get("BENCH_KEEP"):
            tmp_s = os.environ["BENCH_KEEP"]
        tmp = Path(tmp_s)
        port = free_port()
        common = {"JEGO_CARRIER_CONFIG": str(carrier_config(tmp, port)), "JEGO_BRIDGE_TRUNK_PORT": str(port),
                  "JEGO_BRIDGE_APP_CODEC": args.app_codec, "JEGO_LOG_LEVEL": "INFO"}
        metrics_port = free_port()
        worker_env = {**common, "JEGO_METRICS_ENABLED": "true" if args.metrics == "on" else "false",
                      "JEGO_BRIDGE_METRICS_PORT": str(metrics_port)}
        data = tmp / "data"
        slog, blog = tmp / "serve.log", tmp / "bridge.log"
        serve = subprocess.Popen([sys.executable, "-m", "jego_call.cli.main", "serve", "--port", "0", "--data-dir",
                                  str(data), "--no-bridge"], cwd=ROOT, env=env(common), text=True,
                                 stdout=open(slog, "w"), stderr=subprocess.STDOUT)  # noqa: SIM115
        url = wait_for(slog, r"open (http://[0-9.:]+)/", serve).group(1)
        bridge = subprocess.Popen([sys.executable, "-m", "jego_call.cli.main", "bridge", "--server", url,
                                   "--data-dir", str(data), "--max-calls", "64", "--name", "bench"],
                                  cwd=ROOT, env=env(worker_env), text=True, stdout=open(blog, "w"),  # noqa: SIM115
                                  stderr=subprocess.STDOUT)
        try:
            wait_for(blog, r"connected to http", bridge)
            scraping = threading.Event()
            scrapes: list[int] = []
            if args.scrape and args.metrics == "on":
                def scrape() -> None:
                    while not scraping.wait(args.scrape):
                        with urllib.request.urlopen(f"http://127.0.0.1:{metrics_port}/metrics", timeout=5) as r:
                            scrapes.append(len(r.read()))
                threading.Thread(target=scrape, daemon=True).start()
            if args.idle:
                print(json.dumps(idle(bridge, args.idle)), flush=True)
            rows = []
            for n in args.calls:
                row = run(n, url, bridge, blog, data,
                          f"http://127.0.0.1:{metrics_port}/metrics" if args.metrics == "on" else None)
                rows.append(row)
                print(json.dumps(row), flush=True)
            ok = [r["calls"] for r in rows if (r["on_time_min"] or 0) >= 0.99 and (r["pesq_min"] or 0) >= 3.6
                  and r["recorded"] == r["calls"]]
            scraping.set()
            print(f"max_ok_calls={max(ok) if ok else 0} (app codec {args.app_codec}, {os.cpu_count()} CPUs; "
                  f"metrics {args.metrics}, {len(scrapes)} scrapes of {max(scrapes, default=0)} bytes at most)")
            print("| calls | CPU s per call-s | frames on time (worst call) | PESQ nb min / p50 | setup ms p50 / p99 "
                  "| threads |")
            print("|---|---|---|---|---|---|")
            for r in rows:
                print(f"| {r['calls']} | {r['cpu_per_call_s']:.3f} | {100 * (r['on_time_min'] or 0):.1f} % | "
                      f"{r['pesq_min']} / {r['pesq_p50']} | {r['setup_ms_p50']} / {r['setup_ms_p99']} "
                      f"| {r['threads']} |")
        finally:
            for p in (bridge, serve):
                p.terminate()
            for p in (bridge, serve):
                try:
                    p.wait(15)
                except subprocess.TimeoutExpired:
                    p.kill()
    return 0


if __name__ == "__main__":
    sys.exit(main())

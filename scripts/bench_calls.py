#!/usr/bin/env python3
"""Benchmark: N concurrent `jego dial call` -> `jego dial answer --echo` calls through a live server.

Every dialer is its own process (as in real use). Reports, for each side, CPU-seconds per
call-second (the process's own time.process_time() while connected, from its --json), the
share of audio frames released on time (within 10 ms of their 20 ms slot), setup_ms p50/p99,
and the server's CPU from /proc. Not a test: run it and copy the table to docs/benchmarks.md.

    .venv/bin/python scripts/bench_calls.py --calls 1 5 10 --duration 20
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path
from typing import Any

import benchlib  # scripts/ is on sys.path when a script runs
from benchlib import proc_cpu_s

ROOT = Path(__file__).resolve().parents[1]
PASSWORD = "bench-password-1"
DIAL = [sys.executable, "-m", "jego_call.cli.main", "dial"]


def start_server(tmp: Path) -> tuple[subprocess.Popen[str], str]:
    return benchlib.start_server(tmp, JEGO_SIGNALLING_RATE_BURST="1000")


def register(url: str, name: str) -> None:
    req = urllib.request.Request(f"{url}/api/register", method="POST",
                                 data=json.dumps({"username": name, "password": PASSWORD}).encode(),
                                 headers={"Content-Type": "application/json"})
    with urllib.request.urlopen(req, timeout=10):
        pass


def pct(values: list[float], p: float) -> float:
    s = sorted(values)
    return s[min(len(s) - 1, max(0, round(p / 100 * (len(s) - 1))))]


def run(n: int, duration: float, play: str, tmp: Path) -> dict[str, Any]:
    server, url = start_server(tmp)
    try:
        for i in range(n):
            register(url, f"caller{i}")
            register(url, f"callee{i}")
        answerers = []
        for i in range(n):
            err_file = tmp / f"ans{i}.err"
            p = subprocess.Popen([*DIAL, "answer", "--server", url, "--user", f"callee{i}", "--password", PASSWORD,
                                  "--echo", "--count", "1", "--json"], cwd=ROOT, env=benchlib.clean_env(),
                                 stdout=subprocess.PIPE, stderr=open(err_file, "w"), text=True)  # noqa: SIM115
            answerers.append((p, err_file))
        for p, err_path in answerers:
            while "waiting for calls" not in err_path.read_text():
                if p.poll() is not None:
                    raise SystemExit(f"answerer failed: {err_path.read_text()}")
                time.sleep(0.05)
        server_cpu0 = proc_cpu_s(server.pid)
        callers = [subprocess.Popen([*DIAL, "call", f"callee{i}", "--server", url, "--user", f"caller{i}",
                                     "--password", PASSWORD, "--play", play, "--duration", str(duration),
                                     "--json", "--quiet"], cwd=ROOT, env=benchlib.clean_env(), stdout=subprocess.PIPE,
                                    stderr=subprocess.PIPE, text=True)
                    for i in range(n)]
        caller_res = []
        for p in callers:
            out, err = p.communicate(timeout=duration + 120)
            if not out.strip():
                raise SystemExit(f"caller failed ({p.returncode}): {err}")
            caller_res.append(json.loads(out.strip().splitlines()[-1]))
        server_cpu = proc_cpu_s(server.pid) - server_cpu0
        callee_res = []
        for p, _err in answerers:
            out, _ = p.communicate(timeout=60)
            callee_res.append(json.loads(out.strip().splitlines()[-1]))
    finally:
        server.terminate()
        server.wait(10)

    def side(results: list[dict[str, Any]]) -> dict[str, Any]:
        ok = [r for r in results if r["outcome"] == "answered" and r.get("cpu_s") is not None]
        per = [r["cpu_s"] / r["connected_s"] for r in ok if r["connected_s"]]
        on_time = [r["audio"]["frames_on_time"] for r in ok if r["audio"].get("frames_on_time") is not None]
        return {"answered": len(ok), "cpu_per_call_s": statistics.mean(per) if per else None,
                "cpu_max": max(per) if per else None,
                "on_time": statistics.mean(on_time) if on_time else None,
                "on_time_min": min(on_time) if on_time else None,
                "lost": sum(r["audio"].get("packets_lost", 0) for r in ok),
                "received": sum(r["audio"].get("packets_received", 0) for r in ok)}

    setup = [r["setup_ms"] for r in caller_res if r.get("setup_ms") is not None]
    call_s = sum(r["connected_s"] for r in caller_res)
    return {"n": n, "caller": side(caller_res), "callee": side(callee_res),
            "setup_p50": pct(setup, 50) if setup else None, "setup_p99": pct(setup, 99) if setup else None,
            "server_cpu_per_call_s": server_cpu / call_s if call_s else None,
            "dominant_hz": [r["audio"].get("dominant_hz") for r in caller_res],
            "level_dbfs": [r["audio"].get("level_dbfs") for r in caller_res]}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--calls", type=int, nargs="+", default=[1, 5, 10])
    ap.add_argument("--duration", type=float, default=20.0, help="seconds connected per call")
    ap.add_argument("--play", default="tone:1000:-10", help="what callers send (default tone:1000:-10)")
    ap.add_argument("--json", action="store_true", help="print raw results as JSON too")
    args = ap.parse_args()
    rows = []
    for n in args.calls:
        with tempfile.TemporaryDirectory(prefix="bench-calls-") as tmp:
            r = run(n, args.duration, args.play, Path(tmp))
        rows.append(r)
        if args.json:
            print(json.dumps(r), file=sys.stderr)
    print("| calls | answered | caller CPU-s per call-s (mean / max) | echo side CPU-s per call-s (mean / max) "
          "| frames on time caller / echo (min) | packets lost / received | setup_ms p50 / p99 | server CPU-s per call-s (incl. logins) |")
    print("|---|---|---|---|---|---|---|---|")
    for r in rows:
        c, e = r["caller"], r["callee"]
        print(f"| {r['n']} | {c['answered']}/{r['n']} | {c['cpu_per_call_s']:.3f} / {c['cpu_max']:.3f} "
              f"| {e['cpu_per_call_s']:.3f} / {e['cpu_max']:.3f} "
              f"| {100 * c['on_time']:.1f} % ({100 * c['on_time_min']:.1f}) / {100 * e['on_time']:.1f} % ({100 * e['on_time_min']:.1f}) "
              f"| {c['lost'] + e['lost']} / {c['received'] + e['received']} "
              f"| {r['setup_p50']:.0f} / {r['setup_p99']:.0f} | {r['server_cpu_per_call_s']:.4f} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())

#!/usr/bin/env python3
"""Benchmark: the RTP engine alone. N carrier RtpStreams (N/2 pairs on 127.0.0.1 in this one
process: one plays a tone, its peer echoes it) for --seconds; reports per N the process's CPU
per leg-second (send + receive + playout of 50 packets/s each way, G.711, RTCP), the worst
leg's share of slots sent on time (within 5 ms), packets received per leg-second and threads.

The RtpStream API is the same before and after the shared engine, so the same script measures
an older tree too (PYTHONPATH=that/tree). Not a test: run it as root inside `unshare -n`:

    unshare -n -- bash -c 'ip link set lo up && .venv/bin/python scripts/bench_media.py --legs 20 100 200'
    unshare -n -- bash -c 'ip link set lo up && .venv/bin/python scripts/bench_media.py --legs 20 100 200 --loop uvloop'
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import sys
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, os.environ.get("BENCH_TREE", str(ROOT)))

from bridge.carrier.media import Echo, RtpStream, Tone  # noqa: E402
from bridge.sip.sdp import build_offer, negotiated_from_answer  # noqa: E402


async def run(legs: int, seconds: float) -> dict[str, Any]:
    streams: list[RtpStream] = []
    for _ in range(legs // 2):
        a = await RtpStream.create()
        offer = build_offer("127.0.0.1", a.local_port)
        b, ans = await RtpStream.answer(offer.serialize())
        a.configure(negotiated_from_answer(ans.sdp.serialize(), offer))
        a.play(Tone(1000.0, -10.0))
        b.play(Echo())
        a.start()
        streams += [a, b]
    await asyncio.sleep(2.0)
    before = {id(s): s.stats() for s in streams}
    c0, t0 = time.process_time(), time.monotonic()
    await asyncio.sleep(seconds)
    cpu = time.process_time() - c0
    wall = time.monotonic() - t0
    after = {id(s): s.stats() for s in streams}
    threads = len(os.listdir("/proc/self/task"))
    on_time = []
    received = 0
    for s in streams:
        b, a = before[id(s)], after[id(s)]
        ticks = a.ticks - b.ticks - (a.skipped_ticks - b.skipped_ticks)
        on_time.append((a.on_time - b.on_time) / ticks if ticks else 0.0)
        received += a.packets_received - b.packets_received
    for s in streams:
        await s.close()
    n = len(streams)
    return {"legs": n, "cpu_ms_per_leg_s": round(1000 * cpu / wall / n, 3), "cpu_share": round(cpu / wall, 3),
            "on_time_min": round(min(on_time), 4), "rx_pps_per_leg": round(received / wall / n, 2),
            "threads": threads}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--legs", type=int, nargs="+", default=[20, 100, 200])
    ap.add_argument("--seconds", type=float, default=8.0)
    ap.add_argument("--loop", choices=["asyncio", "uvloop"], default="asyncio")
    args = ap.parse_args()
    rows = []
    for legs in args.legs:
        coro = run(legs, args.seconds)
        if args.loop == "uvloop":
            import uvloop

            row = uvloop.run(coro)
        else:
            row = asyncio.run(coro)
        row["loop"] = args.loop
        rows.append(row)
        print(json.dumps(row), flush=True)
    print("| legs | loop | CPU ms per leg-s | process CPU share | slots on time (worst leg) | rx pkt/s per leg "
          "| threads |")
    print("|---|---|---|---|---|---|---|")
    for r in rows:
        print(f"| {r['legs']} | {r['loop']} | {r['cpu_ms_per_leg_s']:.2f} | {100 * r['cpu_share']:.0f} % | "
              f"{100 * r['on_time_min']:.1f} % | {r['rx_pps_per_leg']:.1f} | {r['threads']} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())

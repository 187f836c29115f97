#!/usr/bin/env python3
"""Benchmark: one long call through the bridge (issue 15): drift, memory, latency over time.

One app -> phone call of `--minutes` minutes through one `jego bridge` worker process to the
simulated carrier's echo number (scripts/bench_latency.py's stack and lean caller: ICE, DTLS,
SRTP, Opus), a click every `--click-every` seconds. Reports:

- packet-rate drift, both directions, against the nominal 50 packets/s:
  phone -> app: packets the caller received between the end of minute 1 and the end of the
  call, over the monotonic time between (so the set-up is not counted);
  app -> phone: packets the carrier received (its /status media totals, once the call ended)
  over the length of its recording (one 20 ms slot per frame of the carrier's clock);
- the worker's RSS (/proc/PID/status VmRSS) sampled every minute: the spread after warm-up
  (minute 2 on; ±5 MB is the target);
- latency: the round trip of each click (exact, on the caller's clock) and app -> phone
  (mouth to ear, in the carrier's recording), median of minute 1 against the last minute;
  and at the wire (`at_wire`): each direction less the time the click's frame waited in the
  receiving end's own buffer (the carrier's [media] record_hold file, the caller's
  RtpSession.last_hold), so what is left is the sender, the bridge and the sockets: the two
  simulated ends' adaptive buffers (a frame each, coming and going with the load) are not the
  bridge's.

`--stalls N` reproduces the hour's latency ratchet in minutes: N load stalls of `--stall-ms`
(150 ms) spread evenly between the end of minute 1 and the start of the last minute, taking
turns: the worker process stopped (SIGSTOP, then SIGCONT: its 20 ms clock falls behind and
serves the missed slots back to back before it reads the datagrams that waited, as a loaded
machine does), the carrier's process (`jego serve`) stopped the same way, and the caller's send
path held and then delivered together (a burst on the app -> phone path). Each is logged with
its time; minute 1 is before the first, the last minute after the last, so a buffer that keeps
what a burst put in it shows as minute 1 -> last minute.

Bounded: the call ends after `--minutes`; the script after that plus about a minute. Not a
test: run as root inside `unshare -n`, e.g. in the background for the hour:

    unshare -n -- bash -c 'ip link set lo up && .venv/bin/python scripts/bench_soak.py --minutes 2'
    nohup unshare -n -- bash -c 'ip link set lo up && .venv/bin/python scripts/bench_soak.py \
        --minutes 60' > /tmp/soak60.log 2>&1 &
    unshare -n -- bash -c 'ip link set lo up && .venv/bin/python scripts/bench_soak.py --minutes 3 --stalls 8'
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import signal
import statistics
import sys
import tempfile
import time
import urllib.request
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "scripts"))

import bench_latency as bl  # noqa: E402

from jego_call.media import analysis  # noqa: E402
from jego_call.media.endpoint import enable_loopback_candidates  # noqa: E402
from tests.integration.latency_util import RATE, ClickPort, GatedLeg, wav_8k  # noqa: E402

NOMINAL_PPS = 50.0


def carrier_status(data: Path) -> dict[str, Any]:
    ctl = json.loads((data / "carrier" / "control.json").read_text())
    req = urllib.request.Request(f"{ctl['url']}/status", headers={"Authorization": f"Bearer {ctl['token']}"})
    with urllib.request.urlopen(req, timeout=10) as r:  # noqa: S310 - loopback
        return dict(json.loads(r.read()))


def minute_medians(starts: list[float], values: list[float | None], lo: float, hi: float) -> float | None:
    v = [x for s, x in zip(starts, values, strict=True) if x is not None and lo <= s < hi]
    return round(1000 * statistics.median(v), 1) if v else None


STALL_KINDS = ("worker", "carrier", "caller")


def stall_times(seconds: float, n: int) -> list[float]:
    """`n` instants evenly inside (60 s, `seconds` - 60 s): minute 1 and the last are clean."""
    lo, hi = 60.0, seconds - 60.0
    if n <= 0 or hi <= lo:
        return []
    step = (hi - lo) / (n + 1)
    return [round(lo + step * (k + 1), 3) for k in range(n)]


async def stop_for(pid: int, seconds: float) -> None:
    """SIGSTOP `pid` for `seconds` (a load stall of that process), SIGCONT always."""
    os.kill(pid, signal.SIGSTOP)
    try:
        await asyncio.sleep(seconds)
    finally:
        os.kill(pid, signal.SIGCONT)


def stalls_task(stack: bl.Stack, times: list[float], stall_s: float, log: list[dict[str, Any]],
                ) -> Any:
    """The `during` coroutine for bl.one_call: the stalls at `times` (seconds after media is up)."""
    async def run(leg: GatedLeg) -> None:
        t_up = time.monotonic()
        for k, at in enumerate(times):
            await asyncio.sleep(max(0.0, t_up + at - time.monotonic()))
            kind = STALL_KINDS[k % len(STALL_KINDS)]
            if kind == "caller":
                leg.gate.hold()
                try:
                    await asyncio.sleep(stall_s)
                finally:
                    leg.gate.release()
            else:
                await stop_for(stack.bridge.pid if kind == "worker" else stack.serve.pid, stall_s)
            row = {"stall": k + 1, "kind": kind, "t_s": round(time.monotonic() - t_up, 3), "ms": round(1000 * stall_s)}
            log.append(row)
            print(json.dumps(row), flush=True)
    return run


def leg_buffers(bridge_log: Path) -> list[str]:
    """The worker's end-of-call lines on the SIP leg's buffers and PhoneLink's (gateway/call.py)."""
    text = bridge_log.read_text(errors="replace")
    return [line[line.index("buffers"):][:400] for line in text.splitlines() if "leg stats" in line and "buffers" in line]


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--minutes", type=float, default=60.0)
    ap.add_argument("--click-every", type=float, default=10.0, metavar="S")
    ap.add_argument("--stalls", type=int, default=0, metavar="N",
                    help="inject N load stalls / burst deliveries between minute 1 and the last minute")
    ap.add_argument("--stall-ms", type=float, default=150.0, help="length of each stall")
    ap.add_argument("--nice", type=int, default=-10, help="priority of this process, the worker and the server "
                    "(root only; 0: leave it)")
    args = ap.parse_args()
    bl.be_nice(args.nice)
    if args.minutes < 2:
        raise SystemExit("--minutes must be at least 2 (minute 1 is the reference)")
    enable_loopback_candidates()
    seconds = args.minutes * 60
    times = stall_times(seconds, args.stalls)
    if args.stalls and len(times) != args.stalls:
        raise SystemExit("--stalls needs --minutes of at least 2 with room between minute 1 and the last")
    stalls: list[dict[str, Any]] = []
    print(json.dumps({"minutes": args.minutes, "stalls": times, "stall_ms": args.stall_ms, "loadavg": bl.loadavg(), "nice": os.getpriority(os.PRIO_PROCESS, 0),
                      "started": time.strftime("%H:%M:%S")}),
          flush=True)
    samples: list[dict[str, Any]] = []
    with tempfile.TemporaryDirectory(prefix="bench-soak-") as tmp_s:
        stack = bl.start_stack(Path(tmp_s), args.nice, record_hold=True)
        try:
            port = ClickPort(period_s=args.click_every, first_s=1.0, max_s=seconds + 30)

            def sample(leg: GatedLeg, t: float) -> None:
                st = leg.stats()
                row = {"t_s": round(t, 3), "mono": time.monotonic(), "rss_mb": round(bl.rss_mb(stack.bridge.pid), 2),
                       "rx_packets": st["packets_received"], "tx_packets": st["packets_sent"],
                       "lost": st["packets_lost"], "loadavg": bl.loadavg()[0],
                       # which buffer holds what: the caller's own receive buffer, the carrier's
                       "caller_buffers": leg.session.buffers() if leg.session is not None else None,
                       "carrier_buffers": carrier_status(stack.data).get("buffers")}
                samples.append(row)
                print(json.dumps(row), flush=True)

            during = stalls_task(stack, times, args.stall_ms / 1000, stalls) if times else None
            call = asyncio.run(bl.one_call(stack, "soak", seconds, port, during=during, every_s=60.0, sample=sample))
            time.sleep(1.0)
            totals = carrier_status(stack.data)["media"]
            starts, d = bl.directions(port, call)
            wire = bl.at_wire(port, call, starts, d)
            rec_s = wav_8k(call["recording"]).size / RATE
            time.sleep(1.0)
            buffers = leg_buffers(stack.bridge_log)
        finally:
            stack.stop()
    first = next(s for s in samples if s["t_s"] >= 59.0)
    last = samples[-1]
    pa_pps = (last["rx_packets"] - first["rx_packets"]) / (last["mono"] - first["mono"])
    ap_pps = totals["packets_received"] / rec_s
    # the stalls skip slots (a worker more than max_burst slots late sends fewer packets): the
    # rate is also given from the first sample after the last stall, where nothing is skipped
    calm = next((s for s in samples if s["t_s"] >= max(times) + 1.0), None) if times else None
    calm_pps = ((last["rx_packets"] - calm["rx_packets"]) / (last["mono"] - calm["mono"])
                if calm is not None and last["mono"] > calm["mono"] else None)
    warm = [s["rss_mb"] for s in samples if s["t_s"] >= 119.0]
    end = seconds
    lat = {
        "round_trip_ms_minute_1": minute_medians(starts, d["round_trip"], 0, 60),
        "round_trip_ms_last_minute": minute_medians(starts, d["round_trip"], end - 60, end),
        "app_to_phone_ms_minute_1": minute_medians(starts, d["app_to_phone"], 0, 60),
        "app_to_phone_ms_last_minute": minute_medians(starts, d["app_to_phone"], end - 60, end),
        "phone_to_app_ms_minute_1": minute_medians(starts, d["phone_to_app"], 0, 60),
        "phone_to_app_ms_last_minute": minute_medians(starts, d["phone_to_app"], end - 60, end),
        "by_minute": {k: [minute_medians(starts, d[k], 60 * m, 60 * (m + 1)) for m in range(int(end // 60))]
                      for k in ("app_to_phone", "phone_to_app")},
        "clicks": {k: analysis.delay_summary(v) for k, v in d.items()},
        "at_wire": {
            **{f"{k}_ms_{name}": minute_medians(starts, wire[k], lo, hi)
               for k in ("app_to_phone", "phone_to_app") for name, lo, hi in (("minute_1", 0, 60), ("last_minute", end - 60, end))},
            "by_minute": {k: [minute_medians(starts, wire[k], 60 * m, 60 * (m + 1)) for m in range(int(end // 60))]
                          for k in ("app_to_phone", "phone_to_app")},
            "clicks": {k: analysis.delay_summary(v) for k, v in wire.items()},
        },
        # each click: [seconds after media up, round trip, app -> phone, and both at the wire] in ms
        # (a flip between two values a frame apart is a receiver whose arrivals sit on its slot boundary)
        "per_click": [[round(s, 1), *(None if v is None else round(1000 * float(v), 1)
                                     for v in (d["round_trip"][i], d["app_to_phone"][i],
                                               wire["app_to_phone"][i], wire["phone_to_app"][i]))]
                      for i, s in enumerate(starts)],
    }
    result = {
        "minutes": args.minutes,
        "phone_to_app_pps": round(pa_pps, 4), "phone_to_app_drift_pct": round(100 * (pa_pps / NOMINAL_PPS - 1), 4),
        "phone_to_app_pps_after_stalls": None if calm_pps is None else round(calm_pps, 4),
        "phone_to_app_after_stalls_drift_pct": None if calm_pps is None else round(100 * (calm_pps / NOMINAL_PPS - 1), 4),
        "app_to_phone_pps": round(ap_pps, 4), "app_to_phone_drift_pct": round(100 * (ap_pps / NOMINAL_PPS - 1), 4),
        "carrier_packets_received": totals["packets_received"], "carrier_recording_s": round(rec_s, 2),
        "caller_packets_lost": last["lost"],
        "rss_mb_after_warmup": {"min": min(warm), "max": max(warm), "spread": round(max(warm) - min(warm), 2)}
        if warm else None,
        "rss_mb_series": [s["rss_mb"] for s in samples],
        "latency": lat,
        "stalls": stalls, "worker_buffers_at_end": buffers,
        "loadavg_end": bl.loadavg(), "ended": time.strftime("%H:%M:%S"),
    }
    print(json.dumps(result), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())

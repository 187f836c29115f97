#!/usr/bin/env python3
"""Benchmark: the one-way latency the bridge adds, app -> phone and phone -> app (issue 15).

Clicks (8 ms chirps, jego_call/media/analysis.py) leave a lean caller (`WebRtcLeg`: ICE, DTLS,
SRTP, Opus 32 kb/s at 8 kHz, as in scripts/bench_bridge.py) every `--period` seconds on its
20 ms media clock, go through one `jego bridge` worker process to the simulated carrier's echo
number, and come back. Found by cross-correlation:

- round trip: in the caller's own received audio, on its sending timeline (exact);
- app -> phone (mouth to ear): in the carrier's recording, lined up with our sends by the
  carrier's logged media clock t0 (both are CLOCK_MONOTONIC on one machine: to about 1 ms);
- phone -> app (mouth to ear): the round trip minus app -> phone (the carrier's echo sends
  the frame it records, in the same 20 ms slot).

A mouth-to-ear figure includes the receiving end's own playout buffer, which is the
receiver's and not the bridge's. So the receivers are measured alone first, with no bridge,
in this process: the carrier's `RtpStream` (G.711) receiving from another, and the lean leg
receiving from another lean leg (G.711, so no codec look-ahead is taken off), each with
its arrival phase against its 20 ms clock swept over 2, 6, 10, 14, 18 ms (a constant network
delay on its receive path, subtracted again; each twice, the smaller kept): their mean is that
receiver's own delay,
`carrier_rx_ms` (also the carrier's echo delay, which `jego dial --json` takes off:
jego_call/cli/dial.py CARRIER_ECHO_DELAY_MS) and `leg_rx_ms`. The bridge adds:

    added app -> phone = (app -> phone mouth to ear) - carrier_rx_ms
    added phone -> app = (phone -> app mouth to ear) - leg_rx_ms

Both Opus look-aheads (6.5 ms each: the app's encoder, the bridge's) are counted as the
bridge's. Each call has its own arrival phases (the worker's clock against the carrier's
and ours: 0-20 ms each), so the figure is the median over `--calls` calls, with the range.
Each call also reports `at_wire_*_ms`: the clicks from STEADY_FROM_S on, less the time each
click's frame waited in the receiving end's own buffer (the carrier's [media] record_hold file,
the caller's RtpSession.last_hold; `at_wire`), which leaves the sender, the bridge and the
sockets, whatever the receivers' adaptive buffers do meanwhile.

Then `--burst-ms`: on the caller's send path, `--burst-ms` of datagrams are held and then
sent together (a stall: what made aiortc's buffer ratchet up, issue #543), or dropped
(`drop`: a loss burst), 4 s into the call; clicks every 0.5 s from four calls whose clicks
are offset by 125 ms show the app -> phone latency around it: its floor (median before),
its peak, and how long after the burst's end it is back within 60 ms of the floor (and stays).

Not a test: run as root inside `unshare -n` (only loopback exists); copy the output to
docs/benchmarks.md "Latency, drift and levels":

    unshare -n -- bash -c 'ip link set lo up && .venv/bin/python scripts/bench_latency.py --calls 5'
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
import time
import urllib.request
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from bridge.carrier.media import PcmPlayback, RtpStream, read_holds  # noqa: E402
from bridge.net.webrtc import WebRtcLeg  # noqa: E402
from bridge.sip.sdp import build_offer, negotiated_from_answer  # noqa: E402
from jego_call.client import JegoClient, new_call_id  # noqa: E402
from jego_call.media import analysis  # noqa: E402
from jego_call.media.endpoint import enable_loopback_candidates  # noqa: E402
from jego_call.media.impair import ImpairmentSpec  # noqa: E402
from tests.integration.bridge_util import PLAIN, carrier_config, free_port  # noqa: E402
from tests.integration.latency_util import RATE, ClickPort, GatedLeg, hold_at, one_way, wait_t0, wav_8k  # noqa: E402

PASSWORD = "bench-password-1"
PHASES_MS = (2.0, 6.0, 10.0, 14.0, 18.0)   # the middles of five 4 ms bins: a uniform phase


def env(extra: dict[str, str]) -> dict[str, str]:
    e = {k: v for k, v in os.environ.items() if not k.startswith("JEGO_")}
    e.update(PYTHONUNBUFFERED="1", **extra)
    return e


def be_nice(nice: int) -> None:
    """This process (and what it starts) at `nice`, in a session and scheduler autogroup of its
    own with the same nice (root only; as scripts/bench_bridge.py): the machine is shared, and
    a 20 ms clock that others' jobs delay by 60 ms skips slots, which is not what is measured."""
    import contextlib

    if not nice or os.geteuid() != 0:
        return
    with contextlib.suppress(OSError):
        os.setsid()
    own_autogroup(os.getpid(), nice)
    os.setpriority(os.PRIO_PROCESS, 0, nice)


def own_autogroup(pid: int, nice: int) -> None:
    import contextlib

    if nice and os.geteuid() == 0:
        with contextlib.suppress(OSError):
            Path(f"/proc/{pid}/autogroup").write_text(str(nice))


def loadavg() -> list[str]:
    return Path("/proc/loadavg").read_text().split()[:3]


def rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    raise RuntimeError("no VmRSS")


def wait_log(path: Path, pattern: str, proc: subprocess.Popen[str], timeout: float = 30) -> re.Match[str]:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        m = re.search(pattern, path.read_text(errors="replace"))
        if m:
            return m
        if proc.poll() is not None:
            raise SystemExit(f"{proc.args!r} exited:\n{path.read_text()}")
        time.sleep(0.05)
    raise SystemExit(f"{pattern!r} not seen in {path}")


# --- the receivers alone ---------------------------------------------------------------------------
class _Collect:
    """A carrier AudioSource that keeps what it receives (and sends silence)."""

    def __init__(self) -> None:
        self.frames: list[np.ndarray] = []

    def read(self, n: int, rx: np.ndarray) -> np.ndarray:
        self.frames.append(np.array(rx[:n], dtype=np.int16))
        return np.zeros(n, dtype=np.int16)


async def carrier_rx_delay(phase_ms: float, seconds: float = 4.0) -> float:
    """The carrier RtpStream's own delay (arrival -> recorded/echoed), at one arrival phase."""
    clicks, starts = analysis.click_train(RATE, seconds, period_s=0.5, first_s=0.5)
    a = await RtpStream.create(rtcp=False)
    offer = build_offer("127.0.0.1", a.local_port)
    impair = ImpairmentSpec.parse(f"delay={phase_ms:g}") if phase_ms else None
    b, ans = await RtpStream.answer(offer, rtcp=False, impair=impair)
    sink = _Collect()
    b.play(sink)
    a.configure(negotiated_from_answer(ans.sdp.serialize(), offer))
    a.start()
    a.play(PcmPlayback(np.asarray(np.round(clicks * 32767), dtype=np.int16)))
    await asyncio.sleep(seconds + 0.5)
    assert a.t0 is not None and b.t0 is not None
    await a.close()
    await b.close()
    rec = np.concatenate(sink.frames)
    found = one_way(rec, b.t0, a.t0, starts[:-1], max_delay_s=0.45)
    got = [d for d in found if d is not None]
    return 1000 * statistics.median(got) - phase_ms


async def leg_rx_delay(phase_ms: float, seconds: float = 4.0) -> float:
    """The lean WebRtcLeg's own receive delay (arrival -> played out), at one arrival phase."""
    sender, receiver = ClickPort(0.5, 0.5, seconds + 2), ClickPort(1000.0, 1000.0, seconds + 2)
    impair = ImpairmentSpec.parse(f"delay={phase_ms:g}") if phase_ms else None
    a = WebRtcLeg(sender, codecs=("PCMU",), name="cal-a")
    b = WebRtcLeg(receiver, codecs=("PCMU",), name="cal-b", impair=impair)
    try:
        await a.set_answer(await b.accept_offer(await a.create_offer()))
        await asyncio.gather(a.wait_connected(15), b.wait_connected(15))
        await asyncio.sleep(seconds)
        assert a.session is not None and b.session is not None
        assert a.session.t0 is not None and b.session.t0 is not None
        shift = int(round((a.session.t0 - b.session.t0) * RATE))
        starts = [s + shift for s in sender.click_starts()][:-1]
        found = analysis.click_delays(receiver.received(), RATE, starts, max_delay_s=0.45)
    finally:
        await a.close()
        await b.close()
    got = [d for d in found if d is not None]
    return 1000 * statistics.median(got) - phase_ms


async def calibrate() -> dict[str, Any]:
    """Each receiver at each phase twice, the smaller kept: on a shared machine a late first
    slot can start a fixed buffer one frame later, which is the machine's, not the receiver's."""
    carrier = [min([await carrier_rx_delay(p) for _ in range(2)]) for p in PHASES_MS]
    leg = [min([await leg_rx_delay(p) for _ in range(2)]) for p in PHASES_MS]
    return {"carrier_rx_ms": round(statistics.mean(carrier), 1), "carrier_rx_by_phase_ms": [round(v, 1) for v in carrier],
            "leg_rx_ms": round(statistics.mean(leg), 1), "leg_rx_by_phase_ms": [round(v, 1) for v in leg]}


# --- the stack: jego serve (signalling + carrier) and one jego bridge worker -------------------------
@dataclass
class Stack:
    serve: subprocess.Popen[str]
    bridge: subprocess.Popen[str]
    url: str
    data: Path
    serve_log: Path
    bridge_log: Path
    streams: int = 0            # carrier streams started so far (t0 lines)
    tokens: dict[str, str] = field(default_factory=dict)

    def token(self, name: str) -> str:
        if name not in self.tokens:
            req = urllib.request.Request(f"{self.url}/api/register", method="POST",
                                         data=json.dumps({"username": name, "password": PASSWORD}).encode(),
                                         headers={"Content-Type": "application/json"})
            self.tokens[name] = json.loads(urllib.request.urlopen(req, timeout=30).read())["token"]  # noqa: S310
        return self.tokens[name]

    def stop(self) -> None:
        for p in (self.bridge, self.serve):
            p.terminate()
        for p in (self.bridge, self.serve):
            try:
                p.wait(15)
            except subprocess.TimeoutExpired:
                p.kill()


# --worker-prefetch: a what-if, not a setting: the worker's jitter buffers (both legs') start
# playing with this many frames instead of their configured floor.
PREFETCH_WHAT_IF = """
import runpy, sys
import bridge.rtp.session as s
n = int(sys.argv.pop(1))
init = s.JitterBuffer.__init__
def patched(self, *a, **k):
    k["prefetch"] = n
    init(self, *a, **k)
s.JitterBuffer.__init__ = patched
sys.argv[0] = "jego"
runpy.run_module("jego_call.cli.main", run_name="__main__")
"""


def start_stack(tmp: Path, nice: int = 0, worker_prefetch: int = 0, record_hold: bool = False,
                **extra: str) -> Stack:
    """`jego serve --no-bridge` and one `jego bridge` worker; `record_hold`: the carrier writes
    each recording's receive-buffer holds beside it ([media] record_hold)."""
    port = free_port()
    ccfg = carrier_config(tmp, port)
    if record_hold:
        ccfg.write_text(ccfg.read_text().replace("\nrecord_hold = false", "\nrecord_hold = true", 1))
    common = {"JEGO_CARRIER_CONFIG": str(ccfg), "JEGO_BRIDGE_TRUNK_PORT": str(port),
              "JEGO_LOG_LEVEL": "INFO", "JEGO_BILLING_ENABLED": "false",
              "JEGO_AUTH_REGISTER_SOURCE_BURST": "1000", "JEGO_AUTH_HASH_CPU_SHARE": "1.0", **extra}
    data = tmp / "data"
    slog, blog = tmp / "serve.log", tmp / "bridge.log"
    serve = subprocess.Popen([sys.executable, "-m", "jego_call.cli.main", "serve", "--port", "0", "--data-dir",
                              str(data), "--no-bridge"], cwd=ROOT, env=env(common), text=True,
                             stdout=open(slog, "w"), stderr=subprocess.STDOUT,  # noqa: SIM115
                             start_new_session=True)
    own_autogroup(serve.pid, nice)
    url = wait_log(slog, r"open (http://[0-9.:]+)/", serve).group(1)
    run = [sys.executable, "-c", PREFETCH_WHAT_IF, str(worker_prefetch)] if worker_prefetch else \
        [sys.executable, "-m", "jego_call.cli.main"]
    bridge = subprocess.Popen([*run, "bridge", "--server", url, "--data-dir", str(data), "--name", "bench"],
                              cwd=ROOT, env=env(common), text=True,
                              stdout=open(blog, "w"), stderr=subprocess.STDOUT,  # noqa: SIM115
                              start_new_session=True)
    own_autogroup(bridge.pid, nice)
    wait_log(blog, r"connected to http", bridge)
    return Stack(serve, bridge, url, data, slog, blog)


def carrier_recording(data: Path, call_no: int, timeout: float = 15.0) -> str:
    """The recording path of the carrier's `call_no`-th call record (1-based)."""
    path = data / "carrier" / "cdr.jsonl"
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        recs = [json.loads(x) for x in path.read_text().splitlines() if x.strip()] if path.exists() else []
        if len(recs) >= call_no and recs[call_no - 1].get("recording"):
            return str(recs[call_no - 1]["recording"])
        time.sleep(0.1)
    raise RuntimeError("no carrier record")


async def one_call(stack: Stack, user: str, seconds: float, port: ClickPort,
                   during: Callable[[GatedLeg], Awaitable[None]] | None = None,
                   every_s: float = 0.0, sample: Callable[[GatedLeg, float], None] | None = None) -> dict[str, Any]:
    """One call to the echo number with `port` as the caller's audio, `seconds` after media is
    up. `during(leg)` runs alongside; `sample(leg, t)` every `every_s` seconds. Returns the
    caller's t0, the carrier's t0 and recording, and the caller's stats."""
    async with JegoClient(stack.url) as client:
        client.token, client.username = stack.token(user), user
        auth = await client.connect()
        leg = GatedLeg(port, codecs=("opus",), ice=auth["ice_servers"], name=user)
        port.hold_of = lambda: leg.session.last_hold if leg.session is not None else None
        cid = new_call_id()
        try:
            await client.invite(cid, PLAIN, await leg.create_offer())
            acc = await client.wait_for("accept", cid, timeout=60)
            await leg.set_answer(acc["sdp"])
            await leg.wait_connected(30)
            stack.streams += 1
            t_up = time.monotonic()
            task = asyncio.ensure_future(during(leg)) if during is not None else None
            if sample is not None and every_s > 0:
                k = 0
                while (now := time.monotonic()) < t_up + seconds:
                    sample(leg, now - t_up)
                    k += 1
                    await asyncio.sleep(max(0.0, t_up + k * every_s - time.monotonic()))
                sample(leg, time.monotonic() - t_up)
            else:
                await asyncio.sleep(seconds)
            if task is not None:
                await task
            stats = leg.stats()
            assert leg.session is not None and leg.session.t0 is not None
            t0 = leg.session.t0
            await client.hangup(cid)
            await client.wait_for("call_ended", cid, timeout=20)
        finally:
            await leg.close()
    carrier_t0 = wait_t0(lambda: stack.serve_log.read_text(errors="replace"), stack.streams)
    return {"t0": t0, "carrier_t0": carrier_t0, "recording": carrier_recording(stack.data, stack.streams),
            "stats": stats}



def directions(port: ClickPort, call: dict[str, Any], max_delay_s: float = 0.45,
               ) -> tuple[list[float], dict[str, list[float | None]]]:
    """Per click: round trip, app -> phone and phone -> app mouth-to-ear delays (s). The round
    trip is searched up to the click period (less 50 ms), a one-way delay up to `max_delay_s`."""
    starts = port.click_starts()[:-1]
    rt = analysis.click_delays(port.received(), RATE, starts, max_delay_s=port.period / RATE - 0.05)
    ap = one_way(wav_8k(call["recording"]), call["carrier_t0"], call["t0"], starts, max_delay_s=max_delay_s)
    pa = [r - a if r is not None and a is not None else None for r, a in zip(rt, ap, strict=True)]
    return [s / RATE for s in starts], {"round_trip": rt, "app_to_phone": ap, "phone_to_app": pa}


def at_wire(port: ClickPort, call: dict[str, Any], starts: list[float], d: dict[str, list[float | None]],
            ) -> dict[str, list[float | None]]:
    """Per click (s): app -> phone less the carrier's hold of the click's frame, phone -> app less
    the caller's (see the module docstring); None where a click or a hold was not found."""
    carrier = read_holds(Path(call["recording"]).with_suffix(".hold"))
    shift = int(round((call["t0"] - call["carrier_t0"]) * RATE))
    a2p: list[float | None] = []
    p2a: list[float | None] = []
    for i, t in enumerate(starts):
        s = int(round(t * RATE))
        a, r = d["app_to_phone"][i], d["round_trip"][i]
        hc = None if a is None else hold_at(carrier, s + shift + int(round(a * RATE)))
        hp = None if r is None else hold_at(port.holds, s + int(round(r * RATE)))
        a2p.append(None if a is None or hc is None else a - hc / 1000)
        p2a.append(None if a is None or r is None or hp is None else r - a - hp / 1000)
    return {"app_to_phone": a2p, "phone_to_app": p2a}


def ms(values: list[float | None]) -> dict[str, Any]:
    return analysis.delay_summary(values)


# the app leg's buffer covers a fresh stream's first 3 s with 2 more frames
# (bridge/rtp/session.py JitterBuffer.START_MEMORY): steady state at the wire is counted after that
STEADY_FROM_S = 4.0


async def steady(stack: Stack, calls: int, seconds: float, cal: dict[str, Any]) -> dict[str, Any]:
    rows = []
    for i in range(calls):
        port = ClickPort(period_s=1.0, first_s=1.0, max_s=seconds + 5)
        call = await one_call(stack, f"lat{i}", seconds, port)
        starts, d = directions(port, call)
        row: dict[str, Any] = {k: ms(v) for k, v in d.items()}
        row["added_app_to_phone_ms"] = round(float(row["app_to_phone"]["median_ms"]) - cal["carrier_rx_ms"], 1)
        row["added_phone_to_app_ms"] = round(float(row["phone_to_app"]["median_ms"]) - cal["leg_rx_ms"], 1)
        # at the wire: less the receiving end's own hold of each click's frame (bench_soak's
        # docstring), from STEADY_FROM_S on (after the app leg's 3 s start cover)
        wire = at_wire(port, call, starts, d)
        for k, v in wire.items():
            row[f"at_wire_{k}_ms"] = ms([x for x, t in zip(v, starts, strict=True) if t >= STEADY_FROM_S])["median_ms"]
        row["packets_lost"] = call["stats"].get("packets_lost")
        rows.append(row)
        print(json.dumps({"call": i, **row}), flush=True)
    out: dict[str, Any] = {"calls": calls}
    for key in ("added_app_to_phone_ms", "added_phone_to_app_ms", "at_wire_app_to_phone_ms", "at_wire_phone_to_app_ms"):
        v = [r[key] for r in rows]
        out[key] = {"median": round(statistics.median(v), 1), "min": min(v), "max": max(v)}
    for key in ("round_trip", "app_to_phone", "phone_to_app"):
        out[f"{key}_ms_median"] = round(statistics.median(r[key]["median_ms"] for r in rows), 1)
    return out


async def burst(stack: Stack, mode: str, burst_ms: float, at_s: float = 4.0, seconds: float = 10.0) -> dict[str, Any]:
    """App -> phone latency around a `burst_ms` stall (hold) or loss burst (drop) on our send path."""
    points: list[tuple[float, float]] = []   # (seconds after the burst's end, latency ms)
    for j, offset in enumerate((0.0, 0.125, 0.25, 0.375)):
        port = ClickPort(period_s=0.5, first_s=1.0 + offset, max_s=seconds + 5)
        marks: dict[str, float] = {}

        async def net(leg: GatedLeg, marks: dict[str, float] = marks) -> None:
            await asyncio.sleep(at_s)
            assert leg.session is not None and leg.session.t0 is not None
            marks["start"] = time.monotonic() - leg.session.t0
            leg.gate.hold() if mode == "hold" else leg.gate.drop()
            await asyncio.sleep(burst_ms / 1000)
            marks["end"] = time.monotonic() - leg.session.t0
            leg.gate.release()

        call = await one_call(stack, f"burst{mode}{j}", seconds, port, during=net)
        starts, d = directions(port, call)
        end = marks["end"]
        for s, a in zip(starts, d["app_to_phone"], strict=True):
            if a is not None:
                points.append((s - end, 1000 * a))
    points.sort()
    before = [v for t, v in points if t < -burst_ms / 1000 - 0.1]
    after = [(t, v) for t, v in points if t >= -burst_ms / 1000]
    floor = statistics.median(before) if before else float("nan")
    peak = max((v for _, v in after), default=float("nan"))
    back = None   # the first time after which every click is within 60 ms of the floor
    for i, (t, _v) in enumerate(after):
        if all(v <= floor + 60 for _, v in after[i:]):
            back = max(0.0, t)
            break
    at2 = [v for t, v in after if 1.75 <= t <= 2.25]
    return {"mode": mode, "burst_ms": burst_ms, "floor_ms": round(floor, 1), "peak_ms": round(peak, 1),
            "back_within_60_ms_after_s": None if back is None else round(back, 3),
            "at_2s_ms": round(statistics.median(at2), 1) if at2 else None,
            "clicks": len(points), "trace": [(round(t, 3), round(v, 1)) for t, v in after][:40]}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--calls", type=int, default=5, help="steady-state calls (median over them)")
    ap.add_argument("--seconds", type=float, default=10.0, help="length of each steady-state call")
    ap.add_argument("--burst-ms", type=float, default=300.0, help="the stall / loss burst (0: none)")
    ap.add_argument("--burst-modes", nargs="+", default=["hold", "drop"], choices=["hold", "drop"])
    ap.add_argument("--nice", type=int, default=-10, help="priority of this process, the worker and the server "
                    "(root only; 0: leave it)")
    ap.add_argument("--worker-prefetch", type=int, default=0, metavar="N",
                    help="what-if: the worker's jitter buffers start playing at N frames (0: as configured)")
    args = ap.parse_args()
    be_nice(args.nice)
    enable_loopback_candidates()
    print(json.dumps({"loadavg": loadavg(), "cpus": os.cpu_count(), "nice": os.getpriority(os.PRIO_PROCESS, 0)}),
          flush=True)
    cal = asyncio.run(calibrate())
    print(json.dumps({"receivers_alone": cal}), flush=True)
    with tempfile.TemporaryDirectory(prefix="bench-latency-") as tmp_s:
        stack = start_stack(Path(tmp_s), args.nice, args.worker_prefetch, record_hold=True)
        try:
            res = asyncio.run(steady(stack, args.calls, args.seconds, cal))
            print(json.dumps({"steady": res, "loadavg": loadavg()}), flush=True)
            if args.burst_ms:
                for mode in args.burst_modes:
                    print(json.dumps({"burst": asyncio.run(burst(stack, mode, args.burst_ms)),
                                      "loadavg": loadavg()}), flush=True)
        finally:
            stack.stop()
    return 0


if __name__ == "__main__":
    sys.exit(main())

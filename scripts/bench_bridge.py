#!/usr/bin/env python3
"""Benchmark: N concurrent app -> phone calls through ONE bridge worker process (the lean leg).

Starts `jego serve --no-bridge` (signalling + the simulated carrier, on free 127.0.0.1 ports) and
one `jego bridge` worker process pinned to CPU 0 (`taskset -c 0`); this process (the load) and
the server are pinned to CPU 1. For each N it places N simultaneous calls to a carrier number
that answers and echoes. The callers are lean: each is a `bridge.net.webrtc.WebRtcLeg` (real ICE,
DTLS and SRTP, the same engine as the bridge) that sends pre-encoded speech
(tests/data/speech_en_48k.wav at 8 kHz, Opus 32 kbit/s complexity 5 like a browser, or G.711)
and does not decode what comes back, so the load costs a fraction of what it measures.
Reports per N:

- cpu_ms_per_call_s: CPU ms of the worker (/proc utime + stime) per call-second, over a window
  in which every call is connected (calls per core = 1000 / this);
- on_time_min: the worst call's share of app-bound frames sent within 10 ms of their 20 ms slot
  (the worker logs it per call at the end);
- pesq_min / pesq_p50: narrowband PESQ of the carrier's recording of each call against the
  source at 8 kHz; `g711_alone` is the same speech through G.711 only (the target: >= it - 0.1);
- setup_ms p50 / p99: invite -> accept as the caller sees it; connect_ms p50 / p99: -> media up;
- threads (the worker's, mid-window) and ctxsw_per_call_s (voluntary + involuntary context
  switches of all its threads, per call-second).

`--idle S` first measures the worker with no call for S seconds (CPU ms per second, threads);
`--anchor S` first runs a stock aiortc pair (two RTCPeerConnections in one process on CPU 0,
Opus speech both ways, aiortc's own encoder/decoder) and reports its CPU ms per leg-second.
`--idle S` first measures the worker with no call for S seconds (CPU ms per second, threads).
`--metrics off` starts the worker with `[metrics] enabled = false` (every metrics hook a no-op,
no /metrics); `--scrape S` (with metrics on) GETs the worker's /metrics every S seconds
throughout, as a Prometheus would. With metrics on, `metrics_cpu_share` is the worker's own
jego_bridge_metrics_cpu_seconds_total over its whole CPU in the window (thread CPU of the
counting at scrapes and call ends and of rendering /metrics). The cost of metrics is that
share, and the difference between on and off (docs/benchmarks.md "## Metrics").

The worker, the server and this process run at `--nice` (-10 by default, as root) so that other
jobs on a shared machine take less from them; the worker and the server each run in a session
of their own whose scheduler autogroup gets the same nice (with autogroups a nice value only
counts inside its session). `--nice 0` leaves priorities alone.

`max_ok_calls` is the largest N with on_time >= 99 % and pesq_min >= g711_alone - 0.1 for every
call. The machine may be loaded by others (see /proc/loadavg, printed): figures are a floor.
Not a test: run it as root inside `unshare -n` so only loopback exists, and copy the table to
docs/benchmarks.md "## Bridge":

    unshare -n -- bash -c 'ip link set lo up && .venv/bin/python scripts/bench_bridge.py \
        --idle 10 --anchor 10 --calls 1 10 20 40 60'
    unshare -n -- bash -c 'ip link set lo up && .venv/bin/python scripts/bench_bridge.py \
        --app-codec pcmu --calls 1 10 20 40 60'
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
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

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from bridge.net.opus import OpusEncoder  # noqa: E402
from bridge.net.webrtc import WebRtcLeg  # noqa: E402
from bridge.rtp import g711  # noqa: E402
from jego_call.client import JegoClient, new_call_id  # noqa: E402
from jego_call.media import analysis  # noqa: E402
from jego_call.media.endpoint import enable_loopback_candidates  # noqa: E402
from tests.integration.bridge_util import PLAIN, carrier_config, free_port  # noqa: E402

PASSWORD = "bench-password-1"
SPEECH = ROOT / "tests" / "data" / "speech_en_48k.wav"
WINDOW_S = 8.0  # the CPU window, once every call is connected
WORKER_CPU, LOAD_CPU = 0, 1
PROFILE = ""  # --py-spy PREFIX: py-spy record of the worker in each window, PREFIX-N.txt


def env(extra: dict[str, str]) -> dict[str, str]:
    e = {k: v for k, v in os.environ.items() if not k.startswith("JEGO_")}
    e.update(PYTHONUNBUFFERED="1", **extra)
    return e


def own_autogroup(pid: int, nice: int) -> None:
    """The process (started with start_new_session: its own scheduler autogroup) gets `nice` for
    that group too: with autogroups on (/proc/sys/kernel/sched_autogroup_enabled), a process's
    nice only ranks it inside its session, and sessions share the CPUs evenly."""
    if nice and os.geteuid() == 0:
        with contextlib.suppress(OSError):
            Path(f"/proc/{pid}/autogroup").write_text(str(nice))


def proc_cpu_s(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def cpu_of(pids: list[int]) -> float:
    return sum(proc_cpu_s(p) for p in pids)


def ctxsw_of(pids: list[int]) -> int:
    return sum(proc_ctxsw(p) for p in pids)


def children_of(pid: int) -> list[int]:
    """The `jego bridge --workers K` supervisor's worker processes (from /proc), by name."""
    found = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            if int(stat.read_text().rsplit(")", 1)[1].split()[1]) == pid:
                cmd = (stat.parent / "cmdline").read_bytes().split(b"\0")
                found.append((cmd[cmd.index(b"--name") + 1].decode() if b"--name" in cmd else "", int(stat.parent.name)))
        except (OSError, ValueError):
            continue
    return [p for _, p in sorted(found)]


def proc_threads(pid: int) -> int:
    return len(os.listdir(f"/proc/{pid}/task"))


def proc_ctxsw(pid: int) -> int:
    """Voluntary + involuntary context switches of every thread of `pid` (those alive now)."""
    total = 0
    for tid in os.listdir(f"/proc/{pid}/task"):
        try:
            text = Path(f"/proc/{pid}/task/{tid}/status").read_text()
        except OSError:
            continue
        total += sum(int(m) for m in re.findall(r"(?m)^(?:non)?voluntary_ctxt_switches:\s+(\d+)", text))
    return total


def wait_for(path: Path, pattern: str, proc: subprocess.Popen[str], timeout: float = 30) -> re.Match[str]:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        m = re.search(pattern, path.read_text(errors="replace"))
        if m:
            return m
        if proc.poll() is not None:
            raise SystemExit(f"{proc.args!r} exited:\n{path.read_text()}")
        time.sleep(0.05)
    raise SystemExit(f"{pattern!r} not seen in {path}")


TOKENS: dict[str, str] = {}


def register(url: str, name: str) -> str:
    """The user's token (registered once per run: argon2 costs 0.25 CPU-s a hash here)."""
    if name not in TOKENS:
        req = urllib.request.Request(f"{url}/api/register", data=json.dumps({"username": name, "password": PASSWORD})
                                     .encode(), method="POST", headers={"Content-Type": "application/json"})
        TOKENS[name] = json.loads(urllib.request.urlopen(req, timeout=30).read())["token"]
    return TOKENS[name]


def pct(values: list[float], p: float) -> float:
    s = sorted(values)
    return s[min(len(s) - 1, int(round(p / 100 * (len(s) - 1))))] if s else float("nan")


def speech_pcm() -> np.ndarray:
    x, rate = analysis.read_wav(SPEECH)
    return np.asarray(np.clip(analysis.resample(x, rate, 8000) * 32768.0, -32768, 32767), dtype=np.int16)


RED = [True]  # the callers offer RFC 2198 RED (sent 2 deep when the bridge answers it first, 3 while its RR reports loss); --red off
RED_LOSSY_DEPTH = [3]  # --red-lossy-distance: the callers' RED depth while the bridge reports loss


class PreEncoded:
    """A caller's codec: the next pre-encoded packet of the speech (then silence), and no decoding
    of what the bridge sends back (160 zero samples per packet): the load does not measure itself."""

    def __init__(self, name: str, packets: list[bytes], silence: bytes) -> None:
        self.name = "opus" if name.lower() == "opus" else name.upper()
        self.clock_rate = 48000 if self.name == "opus" else 8000
        self.packets = packets
        self.silence = silence
        self.at = 0
        self._zero = np.zeros(160, dtype=np.int16)

    def encode(self, pcm: np.ndarray) -> bytes:
        i = self.at
        self.at += 1
        return self.packets[i] if i < len(self.packets) else self.silence

    def decode(self, payload: bytes) -> np.ndarray:
        return self._zero

    def conceal(self, samples: int) -> np.ndarray:
        return np.zeros(max(0, samples), dtype=np.int16)


def pre_encode(pcm: np.ndarray, fec_loss: int = 0) -> dict[str, tuple[list[bytes], bytes]]:
    frames = [pcm[i:i + 160] for i in range(0, len(pcm) - 159, 160)]
    enc = OpusEncoder(bitrate=32000, complexity=5)
    if fec_loss:
        enc.configure(loss_percent=fec_loss)  # in-band FEC planned for that loss, as a browser does from our RR
    opus = [enc.encode(f) for f in frames]
    opus_silence = enc.encode(np.zeros(160, dtype=np.int16))
    enc.close()
    out: dict[str, tuple[list[bytes], bytes]] = {"opus": (opus, opus_silence)}
    for name in ("PCMU", "PCMA"):
        encode = g711.encoder_for(name)
        out[name] = ([encode(f) for f in frames], g711.silence_payload(name))
    return out


class Quiet:
    """The caller's AudioPort: counts live frames from the bridge, sends whatever (pre-encoded)."""

    def __init__(self) -> None:
        self.live = 0
        self._frame = np.zeros(160, dtype=np.int16)

    def exchange(self, rx: np.ndarray, live: bool) -> np.ndarray:
        if live:
            self.live += 1
        return self._frame


async def one_call(url: str, user: str, codecs: tuple[str, ...], pre: dict[str, tuple[list[bytes], bytes]],
                   out: dict[str, Any], all_up: asyncio.Event, release: asyncio.Event, speech_s: float) -> None:
    async with JegoClient(url) as client:
        client.token, client.username = TOKENS[user], user
        auth = await client.connect()
        port = Quiet()

        def factory(name: str) -> PreEncoded:
            key = "opus" if name.lower() == "opus" else name.upper()
            return PreEncoded(key, *pre[key])

        leg = WebRtcLeg(port, codecs=codecs, ice=auth["ice_servers"], codec_factory=factory, name=user, red=RED[0],
                        red_lossy_distance=RED_LOSSY_DEPTH[0])
        cid = new_call_id()
        out["call_id"] = cid
        try:
            t0 = time.monotonic()
            await client.invite(cid, PLAIN, await leg.create_offer())
            acc = await client.wait_for("accept", cid, timeout=60)
            out["setup_ms"] = (time.monotonic() - t0) * 1000
            await leg.set_answer(acc["sdp"])
            await leg.wait_connected(30)
            out["connect_ms"] = (time.monotonic() - t0) * 1000
            out["connected"] = time.monotonic()

            async def red_depth() -> None:  # the RED depth the caller sends (it follows the bridge's RR)
                seen: dict[int, float] = {}
                while True:
                    d = int(leg.stats().get("red_distance") or 0)
                    seen.setdefault(d, round(time.monotonic() - out["connected"], 1))
                    out["red_depths"] = seen
                    await asyncio.sleep(0.2)

            sampler = asyncio.create_task(red_depth())
            try:
                await asyncio.gather(release.wait(), asyncio.sleep(speech_s + 1.0))
            finally:
                sampler.cancel()
            out["live_back"] = port.live
            await client.hangup(cid)
            await client.wait_for("call_ended", cid, timeout=20)
        except Exception as exc:  # noqa: BLE001 - reported per call, the run goes on
            out["error"] = f"{type(exc).__name__}: {exc}"
        finally:
            await leg.close()


def gateway_calls(url: str) -> dict[str, int]:
    """Calls the server has on each gateway (its /metrics: jego_gateway_calls{gateway=...})."""
    try:
        with urllib.request.urlopen(f"{url}/metrics", timeout=5) as r:  # noqa: S310 - loopback
            text = r.read().decode()
    except OSError:
        return {}
    return {m.group(1): int(float(m.group(2))) for m in
            re.finditer(r'(?m)^jego_gateway_calls\{gateway="([^"]+)"\} ([0-9.e+-]+)$', text)}


def metrics_cpu_s(metrics_url: str | None) -> float | None:
    """The worker's jego_bridge_metrics_cpu_seconds_total (its metrics' own CPU), or None."""
    if metrics_url is None:
        return None
    with urllib.request.urlopen(metrics_url, timeout=5) as r:  # noqa: S310 - loopback
        text = r.read().decode()
    m = re.search(r"(?m)^jego_bridge_metrics_cpu_seconds_total\{[^}]*\} ([0-9.e+-]+)$", text)
    return float(m.group(1)) if m else None


def run(n: int, url: str, pids: list[int], bridge_log: Path, data: Path, app_codec: str,
        pre: dict[str, tuple[list[bytes], bytes]], ref: np.ndarray, metrics_url: str | None = None) -> dict[str, Any]:
    users = [f"bench{i}" for i in range(n)]
    for u in users:
        register(url, u)
    cdr_path = data / "carrier" / "cdr.jsonl"
    cdr_before = len(cdr_path.read_text().splitlines()) if cdr_path.exists() else 0
    results: list[dict[str, Any]] = [{} for _ in users]
    codecs = ("opus", "PCMU") if app_codec == "opus" else (app_codec.upper(),)
    speech_s = len(ref) / 8000
    probe: dict[str, Any] = {}

    async def all_calls() -> None:
        all_up, release = asyncio.Event(), asyncio.Event()
        tasks = [asyncio.ensure_future(one_call(url, u, codecs, pre, r, all_up, release, speech_s))
                 for u, r in zip(users, results, strict=True)]
        deadline = time.monotonic() + 60 + n
        while sum("connected" in r for r in results) < n and time.monotonic() < deadline:
            if all(t.done() for t in tasks):
                break
            await asyncio.sleep(0.1)
        up = sum("connected" in r for r in results)
        await asyncio.sleep(1.0)
        m0 = await asyncio.to_thread(metrics_cpu_s, metrics_url)
        c0, t0, x0 = cpu_of(pids), time.monotonic(), ctxsw_of(pids)
        spy = None
        if PROFILE:  # py-spy samples the worker through the window (folded stacks, one file per N)
            spy_cmd = [str(Path(sys.executable).parent / "py-spy"), "record", "--pid", str(pids[0]),
                       "--duration", str(int(WINDOW_S)), "--rate", "250", "--format", "raw", "--nonblocking",
                       *(["--native"] if os.environ.get("BENCH_NATIVE") else []), "-o", f"{PROFILE}-{n}.txt"]
            spy = subprocess.Popen(spy_cmd, stdout=subprocess.DEVNULL,  # noqa: ASYNC220 - beside the window
                                   stderr=subprocess.DEVNULL)
        await asyncio.sleep(WINDOW_S / 2)
        probe["per_worker"] = await asyncio.to_thread(gateway_calls, url)
        probe["threads"] = sum(proc_threads(p) for p in pids)
        await asyncio.sleep(WINDOW_S / 2)
        dt = time.monotonic() - t0
        c1 = cpu_of(pids)
        probe.update(up=up, cpu_s=c1 - c0, window=dt, ctxsw=ctxsw_of(pids) - x0)
        m1 = await asyncio.to_thread(metrics_cpu_s, metrics_url)
        if m0 is not None and m1 is not None and c1 > c0:
            probe["metrics_share"] = (m1 - m0) / (c1 - c0)
        release.set()
        if spy is not None:
            await asyncio.to_thread(spy.wait)
        await asyncio.gather(*tasks)

    asyncio.run(all_calls())
    time.sleep(2.0)
    log = bridge_log.read_text(errors="replace")
    on_time = [float(m) for cid in (r.get("call_id") for r in results) if cid
               for m in re.findall(rf"\[call {cid}\] ended .*frames on time ([0-9.]+)", log)]
    recs = [json.loads(line) for line in cdr_path.read_text().splitlines()[cdr_before:] if line.strip()]
    scores = []
    for rec in recs:
        if rec.get("recording"):
            heard, rate = analysis.read_wav(rec["recording"])
            scores.append(analysis.pesq_score(ref, heard, rate, mode="nb"))
    setup = [r["setup_ms"] for r in results if "setup_ms" in r]
    conn = [r["connect_ms"] for r in results if "connect_ms" in r]
    up = int(probe["up"])
    call_s = max(1, up) * probe["window"]
    return {"calls": n, "connected": up, "errors": [r["error"] for r in results if "error" in r][:3],
            "cpu_ms_per_call_s": round(1000 * probe["cpu_s"] / call_s, 2),
            "worker_cpu_share": round(probe["cpu_s"] / probe["window"], 3),
            "on_time_min": min(on_time) if on_time else None, "on_time_reported": len(on_time),
            "pesq_min": round(min(scores), 2) if scores else None,
            "pesq_p50": round(statistics.median(scores), 2) if scores else None, "recorded": len(scores),
            "setup_ms_p50": round(pct(setup, 50)), "setup_ms_p99": round(pct(setup, 99)),
            "connect_ms_p50": round(pct(conn, 50)), "connect_ms_p99": round(pct(conn, 99)),
            "threads": probe.get("threads"), "per_worker": probe.get("per_worker", {}),
            "ctxsw_per_call_s": round(probe["ctxsw"] / call_s, 1),
            "frames_back_min": min((r.get("live_back", 0) for r in results), default=0),
            # RED depths the callers sent and how many seconds into the call each was first seen
            "red_depths": results[0].get("red_depths") if results else None,
            "loadavg": Path("/proc/loadavg").read_text().split()[:3],
            "metrics_cpu_share": round(probe["metrics_share"], 5) if "metrics_share" in probe else None}


def idle(pids: list[int], seconds: float) -> dict[str, Any]:
    """The worker's CPU with no call: ms of CPU per second over `seconds`, and its threads."""
    time.sleep(2.0)
    c0, t0 = cpu_of(pids), time.monotonic()
    time.sleep(seconds)
    ms = (cpu_of(pids) - c0) / (time.monotonic() - t0) * 1000 / len(pids)
    return {"idle_cpu_ms_per_s_per_worker": round(ms, 2), "idle_threads": sum(proc_threads(p) for p in pids),
            "seconds": seconds, "workers": len(pids)}


# --- the anchor: a stock aiortc pair in its own process -------------------------------------------------
ANCHOR = r"""
import asyncio, fractions, json, os, sys, time
import numpy as np
from av import AudioFrame
from aiortc import RTCPeerConnection, MediaStreamTrack
from aiortc.contrib.media import MediaBlackhole
sys.path.insert(0, sys.argv[2])
from jego_call.media import analysis
x, rate = analysis.read_wav(sys.argv[3])
pcm = np.asarray(np.clip(analysis.resample(x, rate, 48000) * 32768, -32768, 32767), dtype=np.int16)

class Speech(MediaStreamTrack):
    kind = "audio"
    def __init__(self):
        super().__init__()
        self.n = 0
        self.t0 = None
    async def recv(self):
        if self.t0 is None:
            self.t0 = time.monotonic()
        at = self.t0 + self.n * 0.02
        delay = at - time.monotonic()
        if delay > 0:
            await asyncio.sleep(delay)
        i = (self.n * 960) % (len(pcm) - 960)
        f = AudioFrame.from_ndarray(pcm[i:i + 960].reshape(1, -1), format="s16", layout="mono")
        f.sample_rate, f.pts, f.time_base = 48000, self.n * 960, fractions.Fraction(1, 48000)
        self.n += 1
        return f

def cpu():
    t = os.times()
    return t.user + t.system

async def main(seconds):
    a, b = RTCPeerConnection(), RTCPeerConnection()
    sinks = []
    for pc in (a, b):
        pc.addTrack(Speech())
        @pc.on("track")
        def on_track(track, sinks=sinks):
            s = MediaBlackhole(); s.addTrack(track); sinks.append(s)
    await a.setLocalDescription(await a.createOffer())
    await b.setRemoteDescription(a.localDescription)
    await b.setLocalDescription(await b.createAnswer())
    await a.setRemoteDescription(b.localDescription)
    while a.connectionState != "connected" or b.connectionState != "connected" or len(sinks) < 2:
        await asyncio.sleep(0.05)
    for s in sinks:
        await s.start()
    await asyncio.sleep(2.0)
    c0, t0 = cpu(), time.monotonic()
    await asyncio.sleep(seconds)
    used, dt = cpu() - c0, time.monotonic() - t0
    print(json.dumps({"anchor": "stock aiortc pair", "cpu_ms_per_leg_s": round(1000 * used / (2 * dt), 1),
                      "threads": len(os.listdir("/proc/self/task"))}))
    for s in sinks:
        await s.stop()
    await a.close(); await b.close()

asyncio.run(main(float(sys.argv[1])))
"""


def anchor(seconds: float, pin: bool) -> dict[str, Any]:
    enable = "import jego_call.media.endpoint as e; e.enable_loopback_candidates()\n"
    cmd = [sys.executable, "-c", enable + ANCHOR, str(seconds), str(ROOT), str(SPEECH)]
    if pin:
        cmd = ["taskset", "-c", str(WORKER_CPU), *cmd]
    res = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=seconds + 60, env=env({}))
    lines = [ln for ln in res.stdout.splitlines() if ln.startswith("{")]
    if res.returncode != 0 or not lines:
        return {"anchor": "stock aiortc pair", "error": res.stderr[-500:]}
    return dict(json.loads(lines[-1]))


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--calls", type=int, nargs="+", default=[1, 10, 20, 40, 60])
    ap.add_argument("--app-codec", choices=["opus", "pcmu", "pcma"], default="opus")
    ap.add_argument("--idle", type=float, default=0.0, metavar="S", help="first measure the idle worker for S s")
    ap.add_argument("--anchor", type=float, default=0.0, metavar="S", help="first measure a stock aiortc pair for S s")
    ap.add_argument("--no-pin", action="store_true", help="do not pin the worker and the load to CPUs 0 and 1")
    ap.add_argument("--nice", type=int, default=-10,
                    help="priority of this process, the worker and the server (root only; 0: leave it)")
    ap.add_argument("--complexity", type=int, default=None, help="the worker's Opus complexity ([bridge])")
    ap.add_argument("--metrics", choices=["on", "off"], default="on", help="the worker's [metrics] enabled")
    ap.add_argument("--impair", default="", metavar="SPEC",
                    help="the worker's [bridge] impair on the app leg, e.g. loss=10,burst=2.5,seed=1 (issue 15)")
    ap.add_argument("--red", choices=["on", "off"], default="on", help="the callers offer and send RED")
    ap.add_argument("--red-lossy-distance", type=int, default=3, metavar="N",
                    help="the callers' RED depth while the bridge's RR reports 3 %% loss or more (2: as before)")
    ap.add_argument("--fec-loss", type=int, default=0, metavar="PCT",
                    help="the callers' pre-encoded speech carries in-band FEC planned for PCT %% loss")
    ap.add_argument("--scrape", type=float, default=0.0, metavar="S",
                    help="scrape the worker's /metrics every S seconds (metrics on)")
    ap.add_argument("--workers", type=int, default=1, metavar="K",
                    help="K worker processes (`jego bridge --workers K`, worker i pinned to CPU i; the load "
                         "and the server unpinned): calls spread over them by the server")
    ap.add_argument("--py-spy", metavar="PREFIX", default="",
                    help="profile the worker with py-spy in each window: folded stacks in PREFIX-N.txt")
    args = ap.parse_args()
    global PROFILE
    PROFILE = args.py_spy
    pin = not args.no_pin and (os.cpu_count() or 1) >= 2
    if pin:
        os.sched_setaffinity(0, {LOAD_CPU})
    if args.nice and os.geteuid() == 0:
        with contextlib.suppress(OSError):
            os.setsid()  # a session (and so an autogroup) of our own
        own_autogroup(os.getpid(), args.nice)
        os.setpriority(os.PRIO_PROCESS, 0, args.nice)  # inherited by the worker, the server, the anchor
    enable_loopback_candidates()
    ref_pcm = speech_pcm()
    ref = analysis.to_float(ref_pcm)
    g711_alone = analysis.pesq_score(ref, analysis.to_float(g711.decoder_for("PCMU")(g711.encoder_for("PCMU")(ref_pcm))),
                                     8000, mode="nb")
    pre = pre_encode(ref_pcm, args.fec_loss)
    print(json.dumps({"g711_alone_pesq": round(g711_alone, 2), "cpus": os.cpu_count(), "pinned": pin,
                      "nice": os.getpriority(os.PRIO_PROCESS, 0),
                      "loadavg": Path("/proc/loadavg").read_text().split()[:3]}), flush=True)
    if args.anchor:
        print(json.dumps(anchor(args.anchor, pin)), flush=True)
    with tempfile.TemporaryDirectory(prefix="bench-bridge-") as tmp_s:
        if os.environ.get("BENCH_KEEP"):
            tmp_s = os.environ["BENCH_KEEP"]
        tmp = Path(tmp_s)
        port = free_port()
        carrier_toml = carrier_config(tmp, port)
        # the carrier account's concurrent-call limit (32 in config/carrier.toml) must not be what we measure
        carrier_toml.write_text(re.sub(r"(?m)^max_calls = \d+", "max_calls = 500", carrier_toml.read_text()))
        common = {"JEGO_CARRIER_CONFIG": str(carrier_toml), "JEGO_BRIDGE_TRUNK_PORT": str(port),
                  "JEGO_BRIDGE_APP_CODEC": args.app_codec, "JEGO_LOG_LEVEL": "INFO",
                  "JEGO_AUTH_REGISTER_SOURCE_BURST": "1000", "JEGO_AUTH_HASH_CPU_SHARE": "1.0",
                  "JEGO_BILLING_ENABLED": "false"}  # prepaid credit is not what this measures
        if args.complexity is not None:
            common["JEGO_BRIDGE_OPUS_COMPLEXITY"] = str(args.complexity)
        if args.impair:
            common["JEGO_BRIDGE_IMPAIR"] = args.impair
        RED[0] = args.red == "on"
        RED_LOSSY_DEPTH[0] = args.red_lossy_distance
        metrics_port = free_port()
        worker_env = {**common, "JEGO_METRICS_ENABLED": "true" if args.metrics == "on" else "false",
                      "JEGO_BRIDGE_METRICS_PORT": str(metrics_port)}
        data = tmp / "data"
        slog, blog = tmp / "serve.log", tmp / "bridge.log"
        serve = subprocess.Popen([sys.executable, "-m", "jego_call.cli.main", "serve", "--port", "0", "--data-dir",
                                  str(data), "--no-bridge"], cwd=ROOT, env=env(common), text=True,
                                 stdout=open(slog, "w"), stderr=subprocess.STDOUT,  # noqa: SIM115
                                 start_new_session=True)
        own_autogroup(serve.pid, args.nice)
        url = wait_for(slog, r"open (http://[0-9.:]+)/", serve).group(1)
        worker = [sys.executable, "-m", "jego_call.cli.main", "bridge", "--server", url, "--data-dir", str(data),
                  "--max-calls", "200", "--name", "bench"]
        if args.workers > 1:
            worker += ["--workers", str(args.workers)]  # a supervisor and K worker processes
        elif pin:
            worker = ["taskset", "-c", str(WORKER_CPU), *worker]
        bridge = subprocess.Popen(worker, cwd=ROOT, env=env(worker_env), text=True, stdout=open(blog, "w"),  # noqa: SIM115
                                  stderr=subprocess.STDOUT, start_new_session=True)
        own_autogroup(bridge.pid, args.nice)
        try:
            wait_for(blog, r"connected to http", bridge)
            pids = [bridge.pid]
            if args.workers > 1:
                deadline = time.monotonic() + 60
                while blog.read_text(errors="replace").count("connected to http") < args.workers:
                    if time.monotonic() > deadline or bridge.poll() is not None:
                        raise SystemExit(f"{args.workers} workers did not connect:\n{blog.read_text()}")
                    time.sleep(0.1)
                pids = children_of(bridge.pid)
                for i, pid in enumerate(pids):  # worker i on CPU i, each in its own session (autogroup)
                    if pin:
                        os.sched_setaffinity(pid, {i % (os.cpu_count() or 1)})
                    own_autogroup(pid, args.nice)
                    with contextlib.suppress(OSError):
                        os.setpriority(os.PRIO_PROCESS, pid, args.nice)
                if pin:  # the load and the server take whatever the workers leave
                    all_cpus = set(range(os.cpu_count() or 1))
                    os.sched_setaffinity(0, all_cpus)
                    os.sched_setaffinity(serve.pid, all_cpus)
            base_threads = sum(proc_threads(p) for p in pids)
            scraping = threading.Event()
            scrapes: list[int] = []
            if args.scrape and args.metrics == "on":
                def scrape() -> None:
                    while not scraping.wait(args.scrape):
                        with urllib.request.urlopen(f"http://127.0.0.1:{metrics_port}/metrics", timeout=5) as r:
                            scrapes.append(len(r.read()))
                threading.Thread(target=scrape, daemon=True).start()
            if args.idle:
                print(json.dumps(idle(pids, args.idle)), flush=True)
            rows = []
            for n in args.calls:
                row = run(n, url, pids, blog, data, args.app_codec, pre, ref,
                          f"http://127.0.0.1:{metrics_port}/metrics" if args.metrics == "on" and len(pids) == 1
                          else None)
                row["threads_per_call"] = round((row["threads"] - base_threads) / n, 2)
                row["workers"] = len(pids)
                rows.append(row)
                print(json.dumps(row), flush=True)
            ok = [r["calls"] for r in rows if (r["on_time_min"] or 0) >= 0.99 and r["connected"] == r["calls"]
                  and (r["pesq_min"] or 0) >= g711_alone - 0.1 and r["recorded"] == r["calls"]]
            scraping.set()
            print(f"max_ok_calls={max(ok) if ok else 0} (app codec {args.app_codec}, {os.cpu_count()} CPUs, "
                  f"G.711 alone PESQ {g711_alone:.2f}; metrics {args.metrics}, {len(scrapes)} scrapes of "
                  f"{max(scrapes, default=0)} bytes at most)")
            print("| calls | workers | worker CPU ms per call-s | frames on time (worst call) | PESQ nb min / p50 "
                  "| setup ms p50 / p99 | threads (per call) | ctx switches per call-s | calls per worker | load avg |")
            print("|---|---|---|---|---|---|---|---|---|---|")
            for r in rows:
                print(f"| {r['calls']} | {r['workers']} | {r['cpu_ms_per_call_s']:.1f} | "
                      f"{100 * (r['on_time_min'] or 0):.1f} % | "
                      f"{r['pesq_min']} / {r['pesq_p50']} | {r['setup_ms_p50']} / {r['setup_ms_p99']} "
                      f"| {r['threads']} ({r['threads_per_call']}) | {r['ctxsw_per_call_s']} | "
                      f"{' / '.join(str(v) for v in r['per_worker'].values()) or '-'} | {' '.join(r['loadavg'])} |")
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

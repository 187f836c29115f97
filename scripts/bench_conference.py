#!/usr/bin/env python3
"""Benchmark: a group call's audio conference, CPU per participant-second, in ONE bridge worker.

Starts `jego serve --no-bridge` (signalling + the simulated carrier, on free 127.0.0.1 ports, with
`calls.group_max_participants` raised to the largest N) and one `jego bridge` worker process, which
hosts the conference (bridge/gateway/conference.py). For each N, N - 1 app members (aiortc
endpoints in one load process) join one group call and one phone leg to the carrier's echo number
(+8613800138000) is added, so the conference mixes N legs: N - 1 Opus legs at 48 kHz and one G.711
leg. With `--talkers all` every app member sends a tone (every leg is summed: the worst case);
with `--talkers one` only the first does (the others are silent: they share one mix). Reports:

- cpu_per_participant_s: CPU-seconds of the bridge process per participant-second, measured over
  8 s once every leg is connected (all of its work: decoding, resampling, mixing, encoding, SRTP);
- cpu_s_per_s: the same for the whole conference (x 100 = % of one core);
- skipped: 20 ms slots the mixing clock skipped after a stall (0 when it kept up);
- heard_dbfs: what the first member hears (level of its received audio, from the analyser).

Then `mix_us_per_participant_s`: the conference's own work alone (the 20 ms step of
`Conference._mix_once`: read each leg's frame from its playout FIFO, the N-1 mixer, write each
leg's frame), in-process on N synthetic legs, as microseconds of CPU per participant-second.

The load process shares the 2 cores with the bridge; the bridge runs at a higher priority
(`--bridge-nice`, as root) so it gets what it needs and the load process takes the rest. Not a test: run it inside `unshare -n` (loopback only) and copy the table to
docs/benchmarks.md "## Group calls":

    unshare -n -- bash -c 'ip link set lo up && .venv/bin/python scripts/bench_conference.py --sizes 3 8 16'
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import re
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import numpy as np  # noqa: E402

from bridge.gateway.call_core import CallSettings  # noqa: E402
from bridge.gateway.conference import Conference, Playout  # noqa: E402
from jego_call.client import JegoClient, new_call_id  # noqa: E402
from jego_call.media.endpoint import MediaEndpoint, enable_loopback_candidates  # noqa: E402
from jego_call.media.sinks import Analyser  # noqa: E402
from jego_call.media.tracks import SilenceSource, ToneSource  # noqa: E402
from tests.integration.bridge_util import carrier_config, free_port  # noqa: E402

PASSWORD = "bench-password-1"
ECHO = "+8613800138000"


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
            raise SystemExit(f"{proc.args!r} exited:\n{path.read_text()}")
        time.sleep(0.05)
    raise SystemExit(f"{pattern!r} not seen in {path}")


def http(url: str, method: str, path: str, body: Any = None, token: str | None = None) -> Any:
    req = urllib.request.Request(f"{url}{path}", data=json.dumps(body).encode() if body is not None else None,
                                 method=method, headers={"Content-Type": "application/json"})
    if token:
        req.add_header("Authorization", f"Bearer {token}")
    try:
        raw = urllib.request.urlopen(req, timeout=20).read()
    except urllib.error.HTTPError as exc:
        if exc.code == 409:
            return None
        raise
    return json.loads(raw) if raw else None


def setup_group(url: str, size: int) -> tuple[str, list[str]]:
    """Users m0..m{size-2}; m0 makes a group with all of them; returns (group id, users)."""
    users = [f"m{size}x{i}" for i in range(size - 1)]
    for u in users:
        http(url, "POST", "/api/register", {"username": u, "password": PASSWORD})
    token = http(url, "POST", "/api/login", {"username": users[0], "password": PASSWORD})["token"]
    for u in users[1:]:
        http(url, "POST", "/api/contacts", {"username": u}, token)
    group = http(url, "POST", "/api/groups", {"name": f"bench {size}", "members": users[1:]}, token)
    return str(group["id"]), users


async def member(url: str, user: str, gid: str, index: int, talk: bool, call: dict[str, Any],
                 joined: asyncio.Event, done: asyncio.Event, out: dict[str, Any]) -> None:
    async with JegoClient(url, auto_ringing=False) as client:
        await client.login(user, PASSWORD)
        auth = await client.connect()
        source = ToneSource(300.0 + 150.0 * index, -20.0) if talk else SilenceSource()
        analyser = Analyser()
        ep = MediaEndpoint(source=source, sinks=[analyser], ice_servers=auth["ice_servers"])
        try:
            offer = await ep.create_offer()
            if index == 0:
                call["id"] = new_call_id()
                await client.send({"type": "group_call_start", "call_id": call["id"], "group": gid,
                                   "media": ["audio"], "sdp": offer})
                call["started"].set()
            else:
                await call["started"].wait()
                await client.send({"type": "group_call_join", "call_id": call["id"], "sdp": offer, "video": False})
            ans = await client.wait_for("group_call_answer", call["id"], timeout=60)
            await ep.set_answer(ans["sdp"])
            await ep.wait_connected(30)
            joined.set()
            if index == 0:
                await call["all_joined"].wait()
                await client.send({"type": "group_call_add_phone", "call_id": call["id"], "number": ECHO})
                while True:
                    st = await client.wait_for("group_call_state", call["id"], timeout=30)
                    if any(p["state"] == "joined" for p in st["phones"]):
                        call["phone_in"].set()
                        break
            await done.wait()
            out["heard_dbfs"] = round(analyser.level_dbfs, 1)
            await client.send({"type": "group_call_leave", "call_id": call["id"]})
            await client.wait_for("group_call_left", call["id"], timeout=10)
        finally:
            await ep.close()


def run(size: int, talkers: str, url: str, bridge: subprocess.Popen[str]) -> dict[str, Any]:
    gid, users = setup_group(url, size)

    async def go() -> dict[str, Any]:
        call: dict[str, Any] = {"started": asyncio.Event(), "all_joined": asyncio.Event(), "phone_in": asyncio.Event()}
        joined = [asyncio.Event() for _ in users]
        done = asyncio.Event()
        outs: list[dict[str, Any]] = [{} for _ in users]
        tasks = [asyncio.ensure_future(member(url, u, gid, i, talkers == "all" or i == 0, call, joined[i], done,
                                              outs[i])) for i, u in enumerate(users)]
        await asyncio.wait_for(asyncio.gather(*(j.wait() for j in joined)), 120)
        call["all_joined"].set()
        await asyncio.wait_for(call["phone_in"].wait(), 60)
        await asyncio.sleep(2.0)   # let playout settle
        c0, t0 = proc_cpu_s(bridge.pid), time.monotonic()
        await asyncio.sleep(8.0)
        cpu = (proc_cpu_s(bridge.pid) - c0) / (time.monotonic() - t0)
        done.set()
        await asyncio.gather(*tasks)
        return {"cpu": cpu, "heard": outs[0].get("heard_dbfs")}

    got = asyncio.run(go())
    return {"participants": size, "app_legs": size - 1, "phone_legs": 1, "talkers": talkers,
            "cpu_s_per_s": round(got["cpu"], 3), "cpu_per_participant_s": round(got["cpu"] / size, 4),
            "heard_dbfs": got["heard"]}


class _SynthLeg:
    """A leg of fixed frames for the mixing step alone (a tone for talkers, silence otherwise)."""

    def __init__(self, index: int, talk: bool) -> None:
        t = np.arange(160) / 8000
        tone = (0.1 * 32767 * np.sin(2 * np.pi * (300 + 150 * index) * t)).astype(np.int16)
        self.frame = tone if talk else np.zeros(160, dtype=np.int16)
        self.inbound = Playout()
        self.out = Playout()

    def read_frame(self) -> Any:
        self.inbound.push(self.frame)
        return self.inbound.pop()

    def write_frame(self, pcm: Any) -> None:
        self.out.push(pcm)
        self.out.pop()


def mix_only(size: int, talkers: str, seconds: float = 20.0) -> float:
    """CPU microseconds of the mixing step per participant-second, N synthetic legs."""
    conf = Conference("bench", trunk=None, send=None, settings=CallSettings())  # type: ignore[arg-type]
    legs = {f"leg{i}": _SynthLeg(i, talkers == "all" or i == 0) for i in range(size)}
    conf.phones.update(legs)  # type: ignore[arg-type]
    names = list(legs)
    frames = int(seconds / 0.020)
    t0 = time.process_time()
    for _ in range(frames):
        conf._mix_once(names, set())
    return (time.process_time() - t0) / (size * seconds) * 1e6


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--sizes", type=int, nargs="+", default=[3, 8, 16])
    ap.add_argument("--talkers", choices=["all", "one", "both"], default="both")
    ap.add_argument("--bridge-nice", type=int, default=-10, help="priority of the bridge process (root only)")
    args = ap.parse_args()
    enable_loopback_candidates()
    modes = ["all", "one"] if args.talkers == "both" else [args.talkers]
    with tempfile.TemporaryDirectory(prefix="bench-conference-") as tmp_s:
        tmp = Path(os.environ.get("BENCH_KEEP") or tmp_s)
        port = free_port()
        common = {"JEGO_CARRIER_CONFIG": str(carrier_config(tmp, port)), "JEGO_BRIDGE_TRUNK_PORT": str(port),
                  "JEGO_LOG_LEVEL": "INFO", "JEGO_CALLS_GROUP_MAX_PARTICIPANTS": str(max(args.sizes)),
                  "JEGO_SIGNALLING_MAX_SESSIONS_PER_USER": "8"}
        data = tmp / "data"
        slog, blog = tmp / "serve.log", tmp / "bridge.log"
        serve = subprocess.Popen([sys.executable, "-m", "jego_call.cli.main", "serve", "--port", "0", "--data-dir",
                                  str(data), "--no-bridge"], cwd=ROOT, env=env(common), text=True,
                                 stdout=open(slog, "w"), stderr=subprocess.STDOUT)  # noqa: SIM115
        url = wait_for(slog, r"open (http://[0-9.:]+)/", serve).group(1)
        bridge = subprocess.Popen([sys.executable, "-m", "jego_call.cli.main", "bridge", "--server", url,
                                   "--data-dir", str(data), "--max-calls", "64", "--name", "bench"],
                                  cwd=ROOT, env=env(common), text=True, stdout=open(blog, "w"),  # noqa: SIM115
                                  stderr=subprocess.STDOUT)
        try:
            if args.bridge_nice and os.geteuid() == 0:
                os.setpriority(os.PRIO_PROCESS, bridge.pid, args.bridge_nice)
            wait_for(blog, r"connected to http", bridge)
            rows = []
            for talkers in modes:
                for size in args.sizes:
                    row = run(size, talkers, url, bridge)
                    time.sleep(1.0)
                    ended = re.findall(r"conference \S+ ended: (\d+) frames mixed, (\d+) skipped",
                                       blog.read_text(errors="replace"))
                    row["skipped"] = int(ended[-1][1]) if ended else None
                    row["mix_us_per_participant_s"] = round(mix_only(size, talkers), 1)
                    rows.append(row)
                    print(json.dumps(row), flush=True)
            print(f"({os.cpu_count()} CPUs; the load process shares them)")
            print("| participants (app + phone) | talkers | CPU s per participant-s | conference CPU s per s | "
                  "slots skipped | first member hears | mixing step alone, µs per participant-s |")
            print("|---|---|---|---|---|---|---|")
            for r in rows:
                print(f"| {r['participants']} ({r['app_legs']} + 1) | {r['talkers']} | {r['cpu_per_participant_s']:.4f} | "
                      f"{r['cpu_s_per_s']:.3f} | {r['skipped']} | {r['heard_dbfs']} dBFS | "
                      f"{r['mix_us_per_participant_s']} |")
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

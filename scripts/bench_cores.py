#!/usr/bin/env python3
"""Benchmark: the decision cost of the two sans-I/O orchestrators, in virtual time (no I/O).

1. HubCore (jego_call/signalling/hub_core.py): LIVE calls held open between users (each with a
   pending max-duration deadline in the heap), then CALLS more calls set up and torn down one
   after another (invite, 2 devices ring, accept, ice, dtmf, hangup: 7 inputs each), with the
   timer consulted after every input as the shell does. Reports inputs/s and calls/s.
2. BridgeCallCore (bridge/gateway/call_core.py): CALLS outbound phone calls through the bridge's
   whole decision path (start, offer answered, 180, 183 with media, 200, DTMF both ways, timer
   ticks with audio stamps, app hangup, LegEnded: 15 inputs each). Reports inputs/s and calls/s.

Every figure is process CPU time (`time.process_time`). Not a test: run it and copy the figures
to docs/benchmarks.md (## Call cores).

    .venv/bin/python scripts/bench_cores.py --calls 20000 --live 0 10000
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from bridge.gateway.call_core import (  # noqa: E402
    AppAudio,
    BridgeCallCore,
    CallSettings,
    OfferAnswered,
    PhoneAudio,
    ServerMessage,
    StartOutbound,
)
from bridge.gateway.legs import LegAnswered, LegDtmf, LegEnded, LegRinging  # noqa: E402
from jego_call.call.reasons import EndReason  # noqa: E402
from jego_call.config import CallsConfig  # noqa: E402
from jego_call.signalling import messages as m  # noqa: E402
from jego_call.signalling.hub_core import HubCore  # noqa: E402

SDP = "v=0\r\no=- 1 1 IN IP4 127.0.0.1\r\ns=-\r\nt=0 0\r\nm=audio 9 UDP/TLS/RTP/SAVPF 111\r\n"


class Directory:
    def __init__(self, users: set[str]) -> None:
        self.users = users

    def exists(self, username: str) -> bool:
        return username in self.users

    def contacts(self, owner: str) -> list[str]:
        return []

    def watchers(self, username: str) -> list[str]:
        return []


def bench_hub(calls: int, live: int) -> dict[str, Any]:
    users = {f"u{i}" for i in range(2 * live + 2)} | {"caller", "callee"}
    core = HubCore(Directory(users), CallsConfig(), max_sessions_per_user=8)
    now, wall = 1000.0, 1.7e9
    for i in range(live):
        core.attach(f"a{i}", f"u{2 * i}")
        core.attach(f"b{i}", f"u{2 * i + 1}")
        core.handle(f"a{i}", m.Invite(f"live-{i:08d}", f"u{2 * i + 1}", ("audio",), SDP), now=now, wall=wall)
        core.handle(f"b{i}", m.Accept(f"live-{i:08d}", SDP), now=now, wall=wall)
    core.attach("c", "caller")
    core.attach("d1", "callee")
    core.attach("d2", "callee")
    inputs = 0
    t0 = time.process_time()
    for i in range(calls):
        cid = f"call-{i:08d}"
        steps: list[tuple[str, Any]] = [
            ("c", m.Invite(cid, "callee", ("audio",), SDP)), ("d1", m.Ringing(cid)), ("d2", m.Ringing(cid)),
            ("d1", m.Accept(cid, SDP)), ("c", m.Ice(cid, None)), ("c", m.Dtmf(cid, "1")), ("c", m.Hangup(cid)),
        ]
        for sid, msg in steps:
            core.handle(sid, msg, now=now, wall=wall)
            core.next_deadline()
            now += 0.001
            inputs += 1
    cpu = time.process_time() - t0
    assert len(core.calls) == live, len(core.calls)
    return {"core": "hub", "live_calls": live, "calls": calls, "inputs": inputs, "cpu_s": round(cpu, 3),
            "inputs_per_s": round(inputs / cpu), "calls_per_s": round(calls / cpu)}


def bench_bridge(calls: int) -> dict[str, Any]:
    settings = CallSettings()
    inputs = 0
    t0 = time.process_time()
    for i in range(calls):
        cid = f"call-{i:08d}"
        core = BridgeCallCore(cid, "out", settings)
        now = 1000.0
        events: list[Any] = [StartOutbound("+8613800138000", SDP), OfferAnswered(SDP), LegRinging(180, False),
                             LegRinging(183, True), LegAnswered("PCMU"),
                             ServerMessage({"type": "dtmf", "call_id": cid, "digits": "1"}), LegDtmf("2")]
        for ev in events:
            core.handle(ev, now)
            core.next_deadline()
            inputs += 1
        for _ in range(2):  # two media-deadline ticks with fresh audio stamps
            at = core.next_deadline()
            assert at is not None
            now = at
            core.handle(AppAudio(now), now)
            core.handle(PhoneAudio(now), now)
            core.handle_timer(now)
            inputs += 3
        core.handle(ServerMessage({"type": "call_ended", "call_id": cid, "reason": "hangup"}), now)
        core.handle(LegEnded(EndReason.HANGUP, None, 16, remote=False), now)
        inputs += 2
        assert core.finished
    cpu = time.process_time() - t0
    return {"core": "bridge", "calls": calls, "inputs": inputs, "cpu_s": round(cpu, 3),
            "inputs_per_s": round(inputs / cpu), "calls_per_s": round(calls / cpu)}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--calls", type=int, default=20000)
    ap.add_argument("--live", type=int, nargs="+", default=[0, 10000], help="calls held open meanwhile (hub)")
    args = ap.parse_args()
    rows = [bench_hub(args.calls, live) for live in args.live] + [bench_bridge(args.calls)]
    for row in rows:
        print(json.dumps(row))
    print("\n| core | live calls | calls | inputs | CPU s | inputs/s | calls/s |\n|---|---|---|---|---|---|---|")
    for r in rows:
        print(f"| {r['core']} | {r.get('live_calls', '-')} | {r['calls']} | {r['inputs']} | {r['cpu_s']} | "
              f"{r['inputs_per_s']} | {r['calls_per_s']} |")


if __name__ == "__main__":
    main()

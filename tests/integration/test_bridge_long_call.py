"""A 40 s app -> phone call through the bridge: no drift (the bridge sends 50 packets/s within
0.1 % both ways) and flat memory (the RSS of the `jego serve` process and its workers, sampled
over the call). The hour-long call is a benchmark (scripts/bench_soak.py, docs/benchmarks.md).
"""

from __future__ import annotations

import asyncio
import re
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from jego_call.client import JegoClient, new_call_id
from jego_call.media.endpoint import MediaEndpoint, enable_loopback_candidates
from jego_call.media.tracks import ToneSource
from tests.conftest import PASSWORD, LiveServer

from .bridge_util import PLAIN, phone_server

pytestmark = pytest.mark.slow

CALL_S = 40.0


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LiveServer]:
    s = phone_server(tmp_path_factory.mktemp("long"))
    yield s
    s.stop()


def rss_mb(pid: int) -> float:
    """RSS of `pid` and its children (jego serve's bridge worker processes), MB."""
    total = 0.0
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            ppid = int(stat.read_text().rsplit(")", 1)[1].split()[1])
            if int(stat.parent.name) != pid and ppid != pid:
                continue
            lines = (stat.parent / "status").read_text().splitlines()
        except (OSError, ValueError):
            continue
        total += sum(int(ln.split()[1]) / 1024 for ln in lines if ln.startswith("VmRSS:"))
    if total <= 0:
        raise AssertionError("no VmRSS")
    return total


async def test_forty_second_call_has_no_drift_and_flat_memory(server: LiveServer) -> None:
    enable_loopback_candidates()
    async with JegoClient(server.url) as client:
        await client.login("alice", PASSWORD)
        auth = await client.connect()
        ep = MediaEndpoint(source=ToneSource(700), ice_servers=auth["ice_servers"])
        cid = new_call_id()
        try:
            await client.invite(cid, PLAIN, await ep.create_offer())
            acc = await client.wait_for("accept", cid, timeout=15)
            await ep.set_answer(acc["sdp"])
            await ep.wait_connected(10)
            t0 = time.monotonic()
            samples: list[tuple[float, float]] = []
            marks: dict[str, tuple[float, int]] = {}
            while (now := time.monotonic()) - t0 < CALL_S:
                samples.append((now - t0, rss_mb(server.proc.pid)))
                st = await ep.stats()
                if now - t0 >= 5 and "a" not in marks:
                    marks["a"] = (time.monotonic(), int(st["packets_received"]))
                marks["b"] = (time.monotonic(), int(st["packets_received"]))
                await asyncio.sleep(1.0)   # a sampling cadence over the call: real time is the subject
            await client.hangup(cid)
            await client.wait_for("call_ended", cid, timeout=10)
        finally:
            await ep.close()
    (ta, pa), (tb, pb) = marks["a"], marks["b"]
    rate = (pb - pa) / (tb - ta)
    print(f"bridge -> app: {rate:.3f} packets/s over {tb - ta:.1f} s")
    assert abs(rate - 50.0) <= 0.05 + 2 / (tb - ta)  # 0.1 %, plus one packet of timing at each mark
    # bridge -> phone: pyVoIP's RTP counter over the answered time, from the bridge's call_report
    status, body = await asyncio.to_thread(_history, server)
    rec = body["calls"][0]
    assert rec["call_id"] == cid
    answered = rec["ended_at"] - rec["answered_at"]
    # The leg's clock skips the slots of an event-loop stall longer than 200 ms instead of
    # bursting them (the RTP timestamp moves with real time); the bridge logs how many. Sent +
    # skipped must keep pace with the wall clock within 0.1 %: no drift (pyVoIP's clock: -0.5 %).
    m = re.search(rf"\[call {cid}\] leg stats .*?'tx_skipped_ticks': (\d+)", server.log())
    skipped = int(m.group(1)) if m else 0
    phone_rate = (rec["phone"]["packets_sent"] + skipped) / answered
    print(f"bridge -> phone: {phone_rate:.3f} packets/s over {answered:.1f} s ({skipped} slots skipped)")
    assert m is not None, "the bridge logged no leg stats for the call"
    assert skipped <= 0.05 * 50 * answered, f"event loop starved: {skipped} slots skipped"
    assert abs(phone_rate - 50.0) <= 0.05 + 3 / answered
    # memory: the second half of the call does not grow over the first
    early = max(m for t, m in samples if CALL_S / 5 <= t < CALL_S / 2)     # after warm-up: 8-20 s
    late = max(m for t, m in samples if t >= CALL_S * 2 / 3)             # the last third: 27-40 s
    print(f"serve RSS: {samples[0][1]:.1f} MB at connect, max {early:.1f} MB (first half), {late:.1f} MB (last third)")
    assert late - early < 3.0


def _history(server: LiveServer) -> tuple[int, dict[str, Any]]:
    from tests.conftest import http_json

    status, body = http_json("POST", f"{server.url}/api/login", {"username": "alice", "password": PASSWORD})
    status, body = http_json("GET", f"{server.url}/api/calls?limit=1", token=body["token"])
    return status, body

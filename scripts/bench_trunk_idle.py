"""CPU of an idle SIP trunk: pyVoIP 1.6.8's own receive loop against the bridge's PyVoipTrunk.

    .venv/bin/python scripts/bench_trunk_idle.py [--seconds 10]

Phase 1 runs pyVoIP's unmodified SIPClient.recv_loop on a bound socket (it polls: sleep(0.01));
phase 2 starts PyVoipTrunk in trunk mode (no REGISTER), whose receive thread blocks in epoll (a selector).
Nothing is sent to either. Printed per phase: CPU of the SIP receive thread (its POSIX thread CPU
clock, ns resolution) and of the whole process (time.process_time), in ms per second of idle,
and for ours the receive thread's wake-ups. Figures go to docs/benchmarks.md ("SIP trunk idle").
"""

from __future__ import annotations

import argparse
import asyncio
import sys
import threading
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bridge.gateway.pyvoip import PyVoipTrunk, TrunkConfig  # noqa: E402
from bridge.gateway.pyvoip.baseline import stock_sip_receive_loop  # noqa: E402


def thread_cpu_s(thread: threading.Thread) -> float:
    assert thread.ident is not None
    return time.clock_gettime(time.pthread_getcpuclockid(thread.ident))


async def measure(thread: threading.Thread, seconds: float) -> tuple[float, float]:
    """(receive thread, whole process) CPU in ms per second over `seconds` of idle."""
    await asyncio.sleep(0.5)  # settle after start-up
    t0, p0, w0 = thread_cpu_s(thread), time.process_time(), time.monotonic()
    await asyncio.sleep(seconds)
    t1, p1, w1 = thread_cpu_s(thread), time.process_time(), time.monotonic()
    wall = w1 - w0
    return 1000 * (t1 - t0) / wall, 1000 * (p1 - p0) / wall


async def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--seconds", type=float, default=10.0)
    args = ap.parse_args()

    thread, stop = stock_sip_receive_loop()
    try:
        stock_thread, stock_proc = await measure(thread, args.seconds)
    finally:
        stop()
    print(f"pyVoIP 1.6.8 recv_loop : receive thread {stock_thread:6.3f} ms CPU/s, process {stock_proc:6.3f} ms CPU/s")

    trunk = PyVoipTrunk(TrunkConfig(register=False, server_port=9))  # nothing is ever sent to it
    await trunk.start()
    try:
        sip = trunk.phone.sip
        recv = next(t for t in threading.enumerate() if t.name == "SIP Recieve")
        w0 = sip.wakeups
        ours_thread, ours_proc = await measure(recv, args.seconds)
        wakeups = sip.wakeups - w0
    finally:
        await trunk.stop()
    print(f"PyVoipTrunk (epoll)    : receive thread {ours_thread:6.3f} ms CPU/s, process {ours_proc:6.3f} ms CPU/s, "
          f"{wakeups} wake-ups in {args.seconds:g} s")


if __name__ == "__main__":
    asyncio.run(main())

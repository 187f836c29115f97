"""Bridge workers on every core: `jego serve` with `[bridge] workers = 2`, and `jego bridge
--workers 2` (bridge/gateway/supervisor.py).

Real processes: `jego serve` (carrier in-process), its `jego bridge` children, `jego dial` callers.
What proves it: the server's gateway directory on /metrics (jego_gateway_calls per gateway: two
concurrent calls sit on two different workers), the workers' own series merged into serve's
/metrics, the carrier's call records (the call of a killed worker is BYEd with cause 41 by the
orphan reaper; the other call runs its full length on the surviving worker), the supervisor's
log (the killed worker started again) and /proc (no worker outlives its supervisor).
"""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import urllib.request
from pathlib import Path

import pytest

from bridge.carrier.cdr import CallRecord, read_records
from tests.conftest import PASSWORD, ROOT, LiveServer, make_user, start_server
from tests.helpers import wait_for

from .bridge_util import PLAIN, carrier_config, free_port, phone_server
from .test_billing_crash import spawn, wait_text
from .test_dial import _env

pytestmark = pytest.mark.timeout(120)


def metric(server: LiveServer, name: str, **labels: str) -> float | None:
    """One series of jego serve's /metrics (None when absent)."""
    with urllib.request.urlopen(f"{server.url}/metrics", timeout=5) as r:  # noqa: S310 - loopback
        text = r.read().decode()
    want = ",".join(f'{k}="{v}"' for k, v in labels.items())
    m = re.search(rf"(?m)^{re.escape(name)}\{{{re.escape(want)}\}} ([0-9.e+-]+)$", text)
    return float(m.group(1)) if m else None


def children(pid: int) -> dict[str, int]:
    """`jego bridge` children of `pid`: worker name -> pid (from /proc)."""
    out: dict[str, int] = {}
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
            cmd = (stat.parent / "cmdline").read_bytes().split(b"\0")
        except OSError:
            continue
        if int(fields[1]) == pid and b"bridge" in cmd and b"--name" in cmd:
            out[cmd[cmd.index(b"--name") + 1].decode()] = int(stat.parent.name)
    return out


def alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except OSError:
        return False
    return state != "Z"


def dial(server: LiveServer, user: str, seconds: int) -> subprocess.Popen[str]:
    return subprocess.Popen([sys.executable, "-m", "jego_call.cli.main", "dial", "call", PLAIN, "--server",
                             server.url, "--user", user, "--password", PASSWORD, "--duration", str(seconds),
                             "--json", "--quiet"], cwd=ROOT, env=_env(), stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)


def records(server: LiveServer) -> list[CallRecord]:
    path = server.data_dir / "carrier" / "cdr.jsonl"
    return read_records(path) if path.exists() else []


def on_two_workers(server: LiveServer, names: tuple[str, str]) -> bool:
    return all(metric(server, "jego_gateway_calls", gateway=n) == 1 for n in names)


def test_serve_runs_two_workers_spreads_calls_and_restarts_a_killed_one(
        tmp_path: Path, procs: list[subprocess.Popen[str]]) -> None:
    server = phone_server(tmp_path, JEGO_BRIDGE_WORKERS="2")
    try:
        names = ("bridge-1", "bridge-2")
        # both registered: the gateway directory and each worker's own series on serve's /metrics
        wait_for(lambda: all(metric(server, "jego_gateway_capacity_calls", gateway=n) == 32 for n in names)
                 and all(metric(server, "jego_bridge_server_connected", worker=n) == 1 for n in names),
                 30, "two bridge workers registered", interval=0.2)
        with urllib.request.urlopen(f"{server.url}/readyz", timeout=5) as r:  # noqa: S310 - loopback
            assert r.status == 200
        pids = children(server.proc.pid)
        assert sorted(pids) == list(names), pids

        long, short = dial(server, "alice", 6), dial(server, "bob", 6)
        procs += [long, short]
        wait_for(lambda: on_two_workers(server, names), 30, "one call on each worker", interval=0.1)

        # kill -9 one worker mid-call: serve starts it again; its call's trunk dialog is BYEd by
        # the orphan reaper (cause 41); the other call runs its 6 s on the surviving worker
        doomed = pids["bridge-1"]
        os.kill(doomed, signal.SIGKILL)   # serve's child, by its pid
        wait_text(server.log_path, f"bridge-1 (pid {doomed}) exited with signal SIGKILL", server.proc, timeout=10)
        wait_for(lambda: (p := children(server.proc.pid).get("bridge-1")) and p != doomed, 10,
                 "bridge-1 started again", interval=0.1)
        wait_for(lambda: metric(server, "jego_gateway_capacity_calls", gateway="bridge-1") == 32, 30,
                 "the restarted bridge-1 registered", interval=0.2)
        for p in (long, short):
            p.wait(60)
        recs = wait_for(lambda: r if len(r := records(server)) == 2 else None, 20, "two carrier records")
        causes = sorted(r.q850_cause or 0 for r in recs)
        assert causes == [16, 41], [(r.q850_cause, r.duration_s, r.reason_text) for r in recs]
        survivor = next(r for r in recs if r.q850_cause == 16)
        orphan = next(r for r in recs if r.q850_cause == 41)
        assert survivor.duration_s >= 5.0, survivor     # carried to its end through the kill
        assert orphan.duration_s < survivor.duration_s, orphan

        # SIGTERM of serve: every worker stops with it
        now = children(server.proc.pid)
        assert sorted(now) == list(names)
        assert server.stop() == 0
        assert not any(alive(p) for p in now.values()), now
        assert "Jego bridge bridge-1 stopped." in server.log() and "Jego bridge bridge-2 stopped." in server.log()
    finally:
        server.stop()


def test_jego_bridge_workers_2(tmp_path: Path, procs: list[subprocess.Popen[str]]) -> None:
    sip = free_port()
    env = {"JEGO_CARRIER_CONFIG": str(carrier_config(tmp_path, sip)), "JEGO_BRIDGE_TRUNK_PORT": str(sip),
           "JEGO_BILLING_ENABLED": "false"}
    server = start_server(tmp_path, ["--no-bridge"], **env)
    try:
        for user in ("alice", "bob"):
            make_user(server, user)
        log = tmp_path / "pool.log"
        pool = spawn(["bridge", "--workers", "2", "--server", server.url, "--data-dir", str(server.data_dir),
                      "--name", "pool"], log, env)
        procs.append(pool)
        names = ("pool-1", "pool-2")
        wait_for(lambda: all(metric(server, "jego_gateway_capacity_calls", gateway=n) == 32 for n in names),
                 30, "two pool workers registered", interval=0.2)
        kids = children(pool.pid)
        assert sorted(kids) == list(names), kids

        calls = [dial(server, "alice", 2), dial(server, "bob", 2)]
        procs += calls
        wait_for(lambda: on_two_workers(server, names), 30, "one call on each worker", interval=0.1)
        for c in calls:
            assert c.wait(60) == 0, c.stderr.read() if c.stderr else ""

        # kill -9 of a worker: the supervisor starts it again
        os.kill(kids["pool-2"], signal.SIGKILL)
        wait_text(log, f"pool-2 (pid {kids['pool-2']}) exited with signal SIGKILL", pool, timeout=10)
        wait_for(lambda: (p := children(pool.pid).get("pool-2")) and p != kids["pool-2"], 10,
                 "pool-2 started again", interval=0.1)
        kids = children(pool.pid)
        # kill -9 of the supervisor: its workers follow it (PR_SET_PDEATHSIG), no orphans
        pool.send_signal(signal.SIGKILL)
        pool.wait(10)
        wait_for(lambda: not any(alive(p) for p in kids.values()), 15, "no worker left", interval=0.1)
    finally:
        server.stop()

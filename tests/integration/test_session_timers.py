"""RFC 4028 session timers on the trunk leg, against the simulated carrier: the bridge asks for a
session interval and refreshes it with UPDATE at half of it, a 422 is answered with the larger
interval, and a session nobody refreshes (its worker killed, no other to clean up) is ended by
the carrier with BYE and Q.850 cause 102, as its call record shows."""

from __future__ import annotations

import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from bridge.carrier.cdr import read_records
from bridge.gateway.legs import LegAnswered, LegEnded
from tests.conftest import PASSWORD, ROOT, make_user, start_server, top_up
from tests.helpers import until, wait_for

from .bridge_util import carrier_config, free_port
from .carrier_util import running_carrier
from .test_billing_crash import wait_text
from .test_bridge_orphans import epoch, stored_dialogs
from .test_dial import _env
from .test_pyvoip_leg import next_event, running_trunk

pytestmark = pytest.mark.timeout(90)

ECHO = "+8613800138000"


async def test_the_leg_refreshes_its_session_and_the_call_outlives_the_interval(tmp_path: Path) -> None:
    async with running_carrier(tmp_path / "c", sip={"min_se_s": 2}) as carrier, \
            running_trunk(carrier.udp_port, register=True, session_expires_s=3) as trunk:
        leg = trunk.new_leg("timer")
        await leg.dial(ECHO)
        await next_event(leg, LegAnswered, timeout=8)
        assert leg.session is not None and (leg.session.seconds, leg.session.refresher) == (3, "uac")
        [call] = list(carrier._calls.values())
        assert call.session is not None and call.session.seconds == 3
        # Without refreshes the carrier would BYE after 2 s (3 - 3/3); hold the call for 7 s.
        await until(lambda: call.refreshes >= 4, 12, "four refreshes")
        assert leg.session_refreshes >= 4 and leg.state == "answered"
        assert carrier.stats["session_expired"] == 0
        await leg.hangup()
        ended = await next_event(leg, LegEnded)
        assert ended.reason == "hangup"


async def test_422_is_answered_with_the_peers_min_se(tmp_path: Path) -> None:
    async with running_carrier(tmp_path / "c", sip={"min_se_s": 5}) as carrier, \
            running_trunk(carrier.udp_port, register=True, session_expires_s=2) as trunk:
        leg = trunk.new_leg("too-small")
        await leg.dial(ECHO)
        await next_event(leg, LegAnswered, timeout=8)
        assert leg.session is not None and leg.session.seconds == 5
        [call] = list(carrier._calls.values())
        assert call.session is not None and call.session.seconds == 5
        await leg.hangup()
        await next_event(leg, LegEnded)


async def test_without_timers_nothing_changes(tmp_path: Path) -> None:
    async with running_carrier(tmp_path / "c") as carrier, \
            running_trunk(carrier.udp_port, register=True, session_expires_s=0) as trunk:
        leg = trunk.new_leg("plain")
        await leg.dial(ECHO)
        await next_event(leg, LegAnswered, timeout=8)
        [call] = list(carrier._calls.values())
        assert leg.session is None and call.session is None
        await leg.hangup()
        await next_event(leg, LegEnded)


def test_a_session_nobody_refreshes_is_ended_by_the_carrier(tmp_path: Path) -> None:
    """kill -9 of the only worker, never restarted: the carrier's session timer ends the call."""
    sip = free_port()
    cfg = carrier_config(tmp_path, sip)
    cfg.write_text(re.sub(r"(?m)^min_se_s = \d+", "min_se_s = 3", cfg.read_text(), count=1))
    env = {"JEGO_CARRIER_CONFIG": str(cfg), "JEGO_BRIDGE_TRUNK_PORT": str(sip), "JEGO_BRIDGE_SESSION_EXPIRES_S": "6"}
    server = start_server(tmp_path, ["--no-bridge"], **env)
    procs: list[subprocess.Popen[str]] = []
    try:
        make_user(server, "alice")
        top_up(server, "alice")   # calls to phones are paid
        log = tmp_path / "w.log"
        worker = subprocess.Popen(
            [sys.executable, "-m", "jego_call.cli.main", "bridge", "--server", server.url, "--data-dir",
             str(tmp_path / "worker-data"), "--name", "lonely",  # its own dialog store: no heir
             "--secret", (server.data_dir / "bridge.key").read_text().strip()],
            cwd=ROOT, env={**_env(), **env}, stdout=open(log, "w"), stderr=subprocess.STDOUT, text=True)  # noqa: SIM115
        procs.append(worker)
        wait_text(log, "connected to http", worker)
        dialer = subprocess.Popen(
            [sys.executable, "-m", "jego_call.cli.main", "dial", "call", ECHO, "--server", server.url,
             "--user", "alice", "--password", PASSWORD, "--duration", "60", "--json", "--quiet"],
            cwd=ROOT, env=_env(), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        procs.append(dialer)
        stored_dialogs(tmp_path / "worker-data", dialer)
        time.sleep(4.0)  # real time is the subject: one refresh (at 3 s) happens while the worker lives
        worker.send_signal(signal.SIGKILL)
        killed_at = time.time()
        worker.wait(10)
        path = server.data_dir / "carrier" / "cdr.jsonl"
        wait_for(lambda: path.exists() and read_records(path), 20, "the carrier to end the call")
        [rec] = read_records(path)
        assert rec.q850_cause == 102 and rec.outcome == "connection_lost", rec
        # 6 s interval: BYE at most 4 s after the last refresh, which was before the kill.
        assert epoch(rec.end) - killed_at <= 4.5, epoch(rec.end) - killed_at
        assert rec.duration_s > 4.0  # it was refreshed past its first 4 s
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
                p.wait(10)
        server.stop()

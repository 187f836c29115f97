"""`kill -9` mid-call, with real processes and real SQLite: the call is settled once, for the time
it was really up: no free calls, no double charges.

1. `jego bridge` (its own process) is killed while a paid call is up: the server sees the
   gateway's socket close at once, ends the call (`connection_lost`) and settles it, in one
   transaction with its call record, for the answer up to that moment. A restart finds
   nothing left to settle.
2. `jego serve` is killed while a paid call is up (the carrier and the bridge run as their own
   processes, so they outlive it): the ledger marked the call every 0.5 s, so the restarted
   server settles it from its billing record (`recovery`) for the time it was last seen up, and
   writes its call record; a second restart charges nothing more.

The rate is 1 fen a second, billed per second, so the charge is the call's length in seconds.
"""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest

from jego_call.billing.fraud import FraudConfig
from jego_call.billing.service import Billing, load_rate_table
from jego_call.db import Database
from tests.conftest import PASSWORD, ROOT, LiveServer, http_json, make_user, start_server, top_up
from tests.helpers import wait_for

from .bridge_util import carrier_config, free_port
from .test_billing_store import SyncBilling
from .test_bridge_billing import RATES
from .test_dial import _env

NUMBER = "+8613800138077"   # answers and echoes
HEARTBEAT_S = 0.5
CREDIT = 500                # fen: 500 s at 1 fen a second


def spawn(args: list[str], log: Path, env: dict[str, str]) -> subprocess.Popen[str]:
    return subprocess.Popen([sys.executable, "-m", "jego_call.cli.main", *args], cwd=ROOT, env={**_env(), **env},
                            stdout=open(log, "w"), stderr=subprocess.STDOUT, text=True)  # noqa: SIM115


def wait_text(path: Path, text: str, proc: subprocess.Popen[str], timeout: float = 20) -> None:
    def seen() -> bool:
        if text in path.read_text(errors="replace"):
            return True
        assert proc.poll() is None, f"{text!r} not in {path.name} (exit {proc.poll()}):\n{path.read_text()}"
        return False

    try:
        wait_for(seen, timeout, f"{text!r} in {path.name}", interval=0.05)
    except AssertionError as exc:
        raise AssertionError(f"{text!r} not in {path.name} (exit {proc.poll()}):\n{path.read_text()}") from exc


def dialer(server: LiveServer) -> subprocess.Popen[str]:
    return subprocess.Popen([sys.executable, "-m", "jego_call.cli.main", "dial", "call", NUMBER, "--server", server.url,
                             "--user", "alice", "--password", PASSWORD, "--duration", "60", "--json", "--quiet"],
                            cwd=ROOT, env=_env(), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def ledger(data_dir: Path, rates: Path) -> Any:
    return SyncBilling(Billing(Database.open(data_dir / "jego.sqlite3"), load_rate_table(rates), FraudConfig()))


def answered_at(billing: Any, proc: subprocess.Popen[str], timeout: float = 30) -> float:
    """When the paid call was answered, by its billing record (waits for the answer)."""
    def answered() -> float | None:
        assert proc.poll() is None, proc.poll()
        calls = billing.view("alice")["calls_in_progress"]
        return float(calls[0]["answered_at"]) if calls and calls[0]["answered_at"] is not None else None

    return wait_for(answered, timeout, "the answered call in the ledger", interval=0.05)


def charges(billing: Any) -> list[dict[str, Any]]:
    return [e for e in billing.view("alice")["entries"] if e["kind"] == "call"]


def settled_by(billing: Any, call_id: str) -> str:
    row = billing.db.query_one("SELECT settled_by FROM call_charges WHERE call_id = ?", (call_id,))
    assert row is not None
    return str(row["settled_by"])


@pytest.fixture
def rates(tmp_path: Path) -> Path:
    p = tmp_path / "rates.toml"
    p.write_text(RATES)
    return p


def test_kill_9_of_the_bridge_mid_call_settles_once_for_the_time_it_was_up(
        tmp_path: Path, rates: Path, procs: list[subprocess.Popen[str]]) -> None:
    sip = free_port()
    env = {"JEGO_CARRIER_CONFIG": str(carrier_config(tmp_path, sip)), "JEGO_BRIDGE_TRUNK_PORT": str(sip),
           "JEGO_BILLING_RATES": str(rates), "JEGO_BILLING_HEARTBEAT_S": str(HEARTBEAT_S)}
    server = start_server(tmp_path, ["--no-bridge"], **env)
    try:
        make_user(server, "alice")
        top_up(server, "alice", CREDIT)
        log = tmp_path / "bridge.log"
        bridge = spawn(["bridge", "--server", server.url, "--data-dir", str(server.data_dir), "--name", "doomed"],
                       log, env)
        procs.append(bridge)
        wait_text(log, "connected to http", bridge)
        call = dialer(server)
        procs.append(call)
        billing = ledger(server.data_dir, rates)
        t_answer = answered_at(billing, call)
        time.sleep(3.0)  # the call is up for a while
        t_kill = time.time()
        bridge.send_signal(signal.SIGKILL)
        bridge.wait(10)
        out, err = call.communicate(timeout=30)
        assert '"reason": "connection_lost"' in out, (out, err)
        [entry] = charges(billing)
        up = t_kill - t_answer
        print(f"bridge killed {up:.2f} s after the answer: billed {entry['billed_s']} s, {-entry['amount']} fen")
        assert up <= entry["billed_s"] <= up + 1.5 and entry["amount"] == -entry["billed_s"], entry
        assert settled_by(billing, entry["call_id"]) == "call"  # by the server, with the call record
        assert billing.view("alice")["balance"] == CREDIT - entry["billed_s"]
        status, body = http_json("POST", f"{server.url}/api/login", {"username": "alice", "password": PASSWORD})
        status, body = http_json("GET", f"{server.url}/api/calls", token=body["token"])
        [rec] = body["calls"]
        assert (rec["call_id"], rec["outcome"], rec["cost"]) == (entry["call_id"], "connection_lost",
                                                                 entry["billed_s"])
        billing.db.close()
        server.restart()  # nothing is left open: recovery charges nothing more
        billing = ledger(server.data_dir, rates)
        assert charges(billing) == [entry] and billing.view("alice")["open_calls"] == 0
        assert "left open by a crash" not in server.log()
        billing.db.close()
    finally:
        server.stop()


def test_kill_9_of_the_server_mid_call_settles_once_on_recovery(
        tmp_path: Path, rates: Path, procs: list[subprocess.Popen[str]]) -> None:
    sip = free_port()
    env = {"JEGO_CARRIER_CONFIG": str(carrier_config(tmp_path, sip)), "JEGO_BRIDGE_TRUNK_PORT": str(sip),
           "JEGO_BILLING_RATES": str(rates), "JEGO_BILLING_HEARTBEAT_S": str(HEARTBEAT_S)}
    carrier_dir = tmp_path / "carrier-data"
    carrier_log = tmp_path / "carrier.log"
    carrier = spawn(["carrier", "--config", env["JEGO_CARRIER_CONFIG"], "--data-dir", str(carrier_dir)],
                    carrier_log, {})
    procs.append(carrier)
    wait_text(carrier_log, "Jego carrier listening", carrier)
    http_port = free_port()
    server = start_server(tmp_path, ["--no-bridge", "--no-carrier", "--port", str(http_port)], **env)
    try:
        make_user(server, "alice")
        top_up(server, "alice", CREDIT)
        log = tmp_path / "bridge.log"
        bridge = spawn(["bridge", "--server", server.url, "--data-dir", str(server.data_dir), "--name", "survivor"],
                       log, env)
        procs.append(bridge)
        wait_text(log, "connected to http", bridge)
        call = dialer(server)
        procs.append(call)
        billing = ledger(server.data_dir, rates)
        t_answer = answered_at(billing, call)
        time.sleep(3.0)   # the call runs 3 s of real time before kill -9: the bill is judged against it
        t_kill = time.time()
        server.stop(signal.SIGKILL)
        call.communicate(timeout=30)
        [cid] = [c["call_id"] for c in billing.view("alice")["calls_in_progress"]]  # left open by the crash
        assert charges(billing) == []
        billing.db.close()

        server.restart()  # same data dir: recovery runs before any socket is served
        billing = ledger(server.data_dir, rates)
        [entry] = charges(billing)
        up = t_kill - t_answer
        print(f"server killed {up:.2f} s after the answer: recovery billed {entry['billed_s']} s")
        assert entry["call_id"] == cid and settled_by(billing, cid) == "recovery"
        # billed up to the last mark (every 0.5 s) before the kill, rounded up to the second
        assert up - HEARTBEAT_S - 0.5 <= entry["billed_s"] <= up + 1, entry
        assert billing.view("alice")["open_calls"] == 0
        assert billing.view("alice")["balance"] == CREDIT - entry["billed_s"]
        assert "settled 1 call(s) left open by a crash" in server.log()
        row = billing.db.query_one("SELECT outcome, answered_at FROM calls WHERE call_id = ?", (cid,))
        assert row is not None and row["outcome"] == "server_shutdown" and row["answered_at"] == pytest.approx(t_answer)
        # the phone side never lasted less than what was billed: no one pays for time that was not up
        cdr_path = carrier_dir / "carrier" / "cdr.jsonl"
        try:   # the bridge hangs up when it loses the server
            wait_for(lambda: cdr_path.exists() and NUMBER in cdr_path.read_text(), 40, "the carrier's record",
                     interval=0.1)
        except AssertionError as exc:
            raise AssertionError(carrier_log.read_text()) from exc
        [cdr] = [json.loads(line) for line in cdr_path.read_text().splitlines() if NUMBER in line]
        assert entry["billed_s"] <= cdr["duration_s"] + 1, (entry, cdr)
        billing.db.close()

        server.restart()  # and a second start settles nothing again
        billing = ledger(server.data_dir, rates)
        assert charges(billing) == [entry]
        billing.db.close()
    finally:
        server.stop()

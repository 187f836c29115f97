"""`kill -9` of a `jego bridge` worker mid-call: the carrier gets a BYE for the orphaned dialog
within 5 s, sent by a restarted worker or by a surviving one (bridge/gateway/dialogs.py), and
its call record proves it. Without that, the carrier would keep the phone leg (and its bill)
up until its 30 s media timeout.

Real processes: `jego serve` with the carrier in-process, `jego bridge` workers in their own
processes on the same data directory (their shared dialog store), `jego dial` as the caller.
"""

from __future__ import annotations

import signal
import subprocess
import sys
import time
from datetime import datetime
from pathlib import Path

import pytest

from bridge.carrier.cdr import CallRecord, read_records
from bridge.gateway.dialogs import DialogRecord, DialogStore
from bridge.gateway.worker import DIALOG_STORE
from tests.conftest import PASSWORD, ROOT, LiveServer, make_user, start_server, top_up
from tests.helpers import wait_for

from .bridge_util import carrier_config, free_port
from .test_billing_crash import spawn, wait_text
from .test_dial import _env

pytestmark = pytest.mark.timeout(120)

NUMBER = "+8613800138000"  # config/carrier.toml: answers and echoes
BYE_WITHIN_S = 5.0


def stored_dialogs(data_dir: Path, proc: subprocess.Popen[str], timeout: float = 30) -> list[DialogRecord]:
    """The answered call's dialog, once the worker holding it has written it down."""
    def stored() -> list[DialogRecord]:
        assert proc.poll() is None, f"no stored dialog (dialer exit {proc.poll()})"
        return dialog_records(data_dir)

    return wait_for(stored, timeout, "a stored dialog", interval=0.05)   # each look opens the worker's store


def dialog_records(data_dir: Path) -> list[DialogRecord]:
    if not (data_dir / DIALOG_STORE).exists():
        return []
    store = DialogStore.open(data_dir / DIALOG_STORE)
    try:
        return store.records()
    finally:
        store.close()


def carrier_record(data_dir: Path, timeout: float) -> CallRecord:
    path = data_dir / "carrier" / "cdr.jsonl"
    try:
        return wait_for(lambda: read_records(path) if path.exists() else [], timeout, "the carrier's record")[0]
    except AssertionError as exc:
        raise AssertionError("the carrier never ended the call") from exc


def log_time(path: Path, text: str) -> float:
    """Epoch seconds of the first log line holding `text` (the log's clock is this machine's)."""
    line = next(ln for ln in path.read_text().splitlines() if text in ln)
    return datetime.strptime(line[:23], "%Y-%m-%d %H:%M:%S,%f").astimezone().timestamp()


def epoch(iso: str) -> float:
    return datetime.fromisoformat(iso.replace("Z", "+00:00")).timestamp()


@pytest.mark.parametrize("heir", ["restarted", "surviving"])
def test_kill_9_of_a_worker_mid_call_the_carrier_gets_a_bye_within_5_s(
        tmp_path: Path, procs: list[subprocess.Popen[str]], heir: str) -> None:
    sip = free_port()
    env = {"JEGO_CARRIER_CONFIG": str(carrier_config(tmp_path, sip)), "JEGO_BRIDGE_TRUNK_PORT": str(sip)}
    server: LiveServer = start_server(tmp_path, ["--no-bridge"], **env)
    try:
        make_user(server, "alice")
        top_up(server, "alice")   # calls to phones are paid
        data = server.data_dir
        workers: dict[str, tuple[subprocess.Popen[str], Path]] = {}
        for name in (["w1"] if heir == "restarted" else ["w1", "w2"]):
            log = tmp_path / f"{name}.log"
            proc = spawn(["bridge", "--server", server.url, "--data-dir", str(data), "--name", name], log, env)
            procs.append(proc)
            workers[name] = (proc, log)
        for proc, log in workers.values():
            wait_text(log, "connected to http", proc, timeout=30)

        dialer = subprocess.Popen(
            [sys.executable, "-m", "jego_call.cli.main", "dial", "call", NUMBER, "--server", server.url,
             "--user", "alice", "--password", PASSWORD, "--duration", "60", "--json", "--quiet"],
            cwd=ROOT, env=_env(), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        procs.append(dialer)
        [rec] = stored_dialogs(data, dialer)
        holder = rec.owner.rsplit("-", 1)[0]
        assert holder in workers, rec.owner
        assert not (data / "carrier" / "cdr.jsonl").exists() or not read_records(data / "carrier" / "cdr.jsonl")

        doomed, _ = workers.pop(holder)
        doomed.send_signal(signal.SIGKILL)
        killed_at = time.time()
        doomed.wait(10)
        if heir == "restarted":
            log = tmp_path / "w1-again.log"
            proc = spawn(["bridge", "--server", server.url, "--data-dir", str(data), "--name", "w1"], log, env)
            procs.append(proc)
            workers["w1-again"] = (proc, log)

        cdr = carrier_record(data, timeout=40)
        ended_after = epoch(cdr.end) - killed_at
        assert cdr.call_id == rec.call_id and cdr.answer is not None
        assert cdr.q850_cause == 41, cdr  # our BYE's Reason (RFC 3326): temporary failure, not a timeout
        [(heir_proc, heir_log)] = workers.values()
        wait_text(heir_log, "orphaned trunk dialog", heir_proc, timeout=5)
        assert heir_proc.poll() is None
        if heir == "surviving":
            # A heartbeat older than 2.5 s marks the dead worker; the survivor sweeps every second.
            assert ended_after <= BYE_WITHIN_S, f"BYE {ended_after:.2f} s after the kill"
        else:
            # A restarted worker sweeps as soon as its trunk is up and every second after: it BYEs
            # the orphan at its first sweep once the dead owner's heartbeat is 2.5 s old, so kill ->
            # BYE is the supervisor's restart time (or those 2.5 s) plus under a sweep: its log says.
            up, bye = (log_time(heir_log, text) for text in ("trunk up", "orphaned trunk dialog"))
            assert up <= bye <= max(up, killed_at + 2.5) + 1.5, (killed_at, up, bye)
            assert epoch(cdr.end) - bye < 1.0

        # The record is gone once the BYE was answered: nothing is BYE'd twice.
        wait_for(lambda: not dialog_records(data), 5, "the answered record dropped", interval=0.05)
        out, _ = dialer.communicate(timeout=30)
        assert dialer.returncode != 0 or '"reason"' in out  # the app was told (connection_lost)
    finally:
        server.stop()


def test_a_clean_stop_leaves_no_dialogs_behind(tmp_path: Path, procs: list[subprocess.Popen[str]]) -> None:
    """SIGTERM hangs calls up itself (server_shutdown: Q.850 41) and leaves the store empty, so
    no other worker BYEs them again."""
    sip = free_port()
    env = {"JEGO_CARRIER_CONFIG": str(carrier_config(tmp_path, sip)), "JEGO_BRIDGE_TRUNK_PORT": str(sip)}
    server = start_server(tmp_path, ["--no-bridge"], **env)
    try:
        make_user(server, "alice")
        top_up(server, "alice")   # calls to phones are paid
        log = tmp_path / "w.log"
        worker = spawn(["bridge", "--server", server.url, "--data-dir", str(server.data_dir), "--name", "w"], log, env)
        procs.append(worker)
        wait_text(log, "connected to http", worker, timeout=30)
        dialer = subprocess.Popen(
            [sys.executable, "-m", "jego_call.cli.main", "dial", "call", NUMBER, "--server", server.url,
             "--user", "alice", "--password", PASSWORD, "--duration", "60", "--json", "--quiet"],
            cwd=ROOT, env=_env(), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        procs.append(dialer)
        stored_dialogs(server.data_dir, dialer)
        worker.send_signal(signal.SIGTERM)
        stopped_at = time.time()
        assert worker.wait(15) == 0
        cdr = carrier_record(server.data_dir, timeout=10)
        assert cdr.q850_cause == 41, cdr
        assert epoch(cdr.end) - stopped_at < 5.0
        store = DialogStore.open(server.data_dir / DIALOG_STORE)
        try:
            assert store.records() == []
        finally:
            store.close()
        dialer.communicate(timeout=30)
    finally:
        server.stop()

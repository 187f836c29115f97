"""`jego bridge` as its own process: it finds the server's gateway secret in DATA/bridge.key,
registers on the carrier, takes calls up to --max-calls, and the server refuses the next call
(`unreachable`) instead of squeezing it in. SIGTERM stops it cleanly.
"""

from __future__ import annotations

import json
import re
import signal
import subprocess
import sys
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.conftest import PASSWORD, ROOT, LiveServer, make_user, start_server, top_up
from tests.helpers import wait_for

from .bridge_util import PLAIN, carrier_config, carrier_record, free_port, phone_server
from .test_dial import DIAL, _env, dial


def get_text(url: str) -> str:
    with urllib.request.urlopen(url, timeout=5) as r:  # noqa: S310 - loopback
        return str(r.read().decode())


@pytest.fixture
def setup(tmp_path: Path) -> Iterator[tuple[LiveServer, subprocess.Popen[str], Path]]:
    port = free_port()
    env = {"JEGO_CARRIER_CONFIG": str(carrier_config(tmp_path, port)), "JEGO_BRIDGE_TRUNK_PORT": str(port)}
    server = start_server(tmp_path, ["--no-bridge"], **env)
    for name in ("alice", "bob"):
        make_user(server, name)
        top_up(server, name)
    log = tmp_path / "bridge.log"
    proc = subprocess.Popen(
        [sys.executable, "-m", "jego_call.cli.main", "bridge", "--server", server.url, "--data-dir",
         str(server.data_dir), "--max-calls", "1", "--name", "extra"],
        cwd=ROOT, env={**_env(), **env}, stdout=open(log, "w"), stderr=subprocess.STDOUT, text=True)  # noqa: SIM115

    def connected() -> bool:
        assert proc.poll() is None, log.read_text()
        return "connected to http" in log.read_text()

    try:   # stopped by PID even when the worker never connects
        wait_for(connected, 60, "the extra worker to connect")   # a readiness wait: generous under load
        yield server, proc, log
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(10)
        server.stop()


def test_separate_worker_takes_calls_up_to_its_limit(setup: tuple[LiveServer, subprocess.Popen[str], Path]) -> None:
    server, proc, log = setup
    first = subprocess.Popen([*DIAL, "call", PLAIN, "--server", server.url, "--user", "alice", "--password",
                              PASSWORD, "--duration", "15", "--json", "--quiet"],
                             cwd=ROOT, env=_env(), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    # the first call holds the worker's one slot: its /metrics says so (port in the start line)
    metrics = re.search(r"metrics (http://\S+/metrics)", log.read_text())
    assert metrics, log.read_text()
    url = metrics.group(1)

    def slot_taken() -> bool:
        assert first.poll() is None, "the first call never reached the worker"
        return 'jego_bridge_calls_in_use{worker="extra"} 1.0' in get_text(url)

    wait_for(slot_taken, 30, "the first call in the worker's calls_in_use", interval=0.1)
    rc, res, err = dial(server, PLAIN, "--json", user="bob")
    assert res is not None and res["reason"] == "unreachable" and rc == 1, (res, err)
    out, err1 = first.communicate(timeout=45)
    assert first.returncode == 0, err1
    assert json.loads(out.strip().splitlines()[-1])["outcome"] == "answered"
    assert carrier_record(server, PLAIN)["outcome"] == "hangup"
    assert "gateway extra connected (capacity 1)" in server.log()
    proc.send_signal(signal.SIGTERM)
    assert proc.wait(20) == 0
    assert "stopped" in log.read_text()


def test_maximum_call_duration_ends_both_legs(tmp_path: Path) -> None:
    server = phone_server(tmp_path / "maxdur", JEGO_BRIDGE_MAX_CALL_S="2")
    try:
        rc, res, err = dial(server, PLAIN, "--duration", "15", "--json")
        assert rc == 0 and res is not None, err
        # the bridge hung up: the app hears `hangup` by the phone side with Q.850 102 (timer expiry)
        assert res["reason"] == "hangup" and res["by"] == PLAIN and res["q850_cause"] == 102, res
        assert res["connected_s"] < 5
        assert carrier_record(server, PLAIN)["outcome"] == "hangup"  # our BYE reached the carrier
    finally:
        server.stop()

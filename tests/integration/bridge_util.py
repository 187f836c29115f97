"""Helpers for the bridge tests: a `jego serve` with the simulated carrier and the in-process
bridge on free 127.0.0.1 ports, the carrier's call records, and audio judges.

`phone_server(tmp)` writes a copy of config/carrier.toml with a free SIP port, short timers and a
few extra test numbers (below), and starts `jego serve` with JEGO_CARRIER_CONFIG pointing at it
and JEGO_BRIDGE_TRUNK_PORT at that port. Calls to phones are paid: alice and bob get 50 CNY of
credit (`credit=0` for none).
"""

from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path
from typing import Any

import numpy as np

from jego_call.media import analysis
from tests.conftest import PASSWORD, ROOT, LiveServer, make_user, start_server, top_up
from tests.helpers import wait_for

from .carrier_util import free_port
from .test_dial import _env

HOST = "127.0.0.1"
SPEECH = ROOT / "tests" / "data" / "speech_en_48k.wav"
HANGS_UP = "+8613800138001"   # answers, echoes, hangs up (BYE, cause 16) after 2 s
TONE_1K = "+8613800138002"    # 180, answers, plays 3 s of 1 kHz, then echoes
PLAIN = "+8613800138003"      # 180, answers and echoes (no early media)

EXTRA_NUMBERS = f"""
[numbers."{HANGS_UP}"]
description = "test: answers, echoes, hangs up after 2 s"
steps = [{{ op = "ring", code = 180 }}, {{ op = "answer", media = ["echo"], hangup_after_s = 2 }}]

[numbers."{TONE_1K}"]
description = "test: answers, 3 s of 1 kHz, then echoes"
steps = [{{ op = "ring", code = 180 }}, {{ op = "answer", media = ["tone:1000:3", "echo"] }}]

[numbers."{PLAIN}"]
description = "test: 180, answers and echoes"
steps = [{{ op = "ring", code = 180 }}, {{ op = "answer", media = ["echo"] }}]
"""


def carrier_config(tmp: Path, port: int, ring_timeout_s: float = 3.0) -> Path:
    """config/carrier.toml with [sip] port/timers changed and EXTRA_NUMBERS appended."""
    text = (ROOT / "config" / "carrier.toml").read_text()
    text, n = re.subn(r"(?m)^port = 5060\b", f"port = {port}", text, count=1)
    assert n == 1
    text = re.sub(r"(?m)^ring_timeout_s = [0-9.]+", f"ring_timeout_s = {ring_timeout_s}", text, count=1)
    text = re.sub(r"(?m)^no_response_s = [0-9.]+", "no_response_s = 2.0", text, count=1)
    text = text.replace("[cdr]", EXTRA_NUMBERS + "\n[cdr]", 1)
    path = tmp / "carrier.toml"
    path.write_text(text)
    return path


# The carrier's test numbers sit in one block (+86 139 0000 0xxx) and a suite dials many of them
# as alice within minutes: to the velocity rules and the hourly cap that is a toll fraudster, so
# the phone servers of tests that are not about fraud raise those thresholds (a test about fraud
# passes its own, which win; tests/integration/test_bridge_billing.py).
TEST_CALLER_FRAUD = {"JEGO_FRAUD_MAX_CALLS_PER_HOUR": "1000", "JEGO_FRAUD_DISTINCT_DESTINATIONS_WARNING": "500",
                     "JEGO_FRAUD_DISTINCT_DESTINATIONS_CRITICAL": "1000", "JEGO_FRAUD_SEQUENTIAL_WARNING": "500",
                     "JEGO_FRAUD_SEQUENTIAL_CRITICAL": "1000"}


def phone_server(tmp: Path, extra_args: list[str] | None = None, credit: int = 5000, **env: str) -> LiveServer:
    """`jego serve` with the carrier and one bridge worker process (start_server's default;
    JEGO_BRIDGE_WORKERS in `env` for more) on free ports; users alice and bob exist,
    each with `credit` minor units (fen) of prepaid credit; the velocity rules and the hourly cap
    loosened (TEST_CALLER_FRAUD) unless `env` sets them."""
    tmp.mkdir(parents=True, exist_ok=True)
    port = free_port()
    full = {"JEGO_CARRIER_CONFIG": str(carrier_config(tmp, port)), "JEGO_BRIDGE_TRUNK_PORT": str(port),
            "JEGO_BRIDGE_MEDIA_TIMEOUT_S": "10", **TEST_CALLER_FRAUD}
    full.update(env)
    server = start_server(tmp, [] if extra_args is None else extra_args, **full)
    for name in ("alice", "bob"):
        make_user(server, name)
        if credit:
            top_up(server, name, credit)
    wait_for_log(server, "connected to http", 20)
    return server


def wait_for_log(server: LiveServer, text: str, timeout: float = 10) -> None:
    def logged() -> bool:
        if text in server.log():
            return True
        if server.proc.poll() is not None:
            raise AssertionError(f"{text!r} not in the log of the exited server:\n{server.log()}")
        return False

    try:
        wait_for(logged, timeout, f"{text!r} in the server log", interval=0.05)
    except AssertionError as exc:
        raise AssertionError(f"{text!r} not in the server log:\n{server.log()}") from exc


def carrier_records(server: LiveServer) -> list[dict[str, Any]]:
    path = server.data_dir / "carrier" / "cdr.jsonl"
    if not path.exists():
        return []
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def carrier_record(server: LiveServer, to: str, timeout: float = 10) -> dict[str, Any]:
    """The newest carrier CDR of a call to `to` (waits for it to be written)."""
    def records_to() -> list[dict[str, Any]]:
        return [r for r in carrier_records(server) if r.get("to") == to]

    try:
        return wait_for(records_to, timeout, f"a carrier record for {to}", interval=0.1)[-1]
    except AssertionError as exc:
        raise AssertionError(f"no carrier record for {to}: {carrier_records(server)}") from exc


def carrier_call(server: LiveServer, frm: str, to: str, *args: str, timeout: float = 60) -> tuple[int, dict[str, Any]]:
    """`jego carrier call FROM TO --json ...` against the server's carrier."""
    cmd = [sys.executable, "-m", "jego_call.cli.main", "carrier", "call", frm, to, "--json",
           "--data-dir", str(server.data_dir), *args]
    res = subprocess.run(cmd, cwd=ROOT, env=_env(), capture_output=True, text=True, timeout=timeout)
    out = res.stdout.strip()
    assert out, f"jego carrier call printed nothing (exit {res.returncode}):\n{res.stderr}"
    return res.returncode, json.loads(out.splitlines()[-1])


def speech_8k() -> np.ndarray:
    x, rate = analysis.read_wav(SPEECH)
    return analysis.resample(x, rate, 8000)


def segment(x: np.ndarray, rate: int, start_s: float, end_s: float) -> np.ndarray:
    return x[int(start_s * rate): int(end_s * rate)]


def tone_ok(x: np.ndarray, rate: int, freq: float, level_dbfs: float) -> tuple[bool, float, float]:
    """(frequency within 1 % and level within 1 dB, measured Hz, measured dBFS)."""
    hz = analysis.dominant_frequency(x, rate)
    lvl = analysis.level_dbfs(x)
    return abs(hz - freq) <= 0.01 * freq and abs(lvl - level_dbfs) <= 1.0, hz, lvl


__all__ = ["PASSWORD", "free_port", "phone_server"]

"""`jego dial` as real subprocesses against a live `jego serve` (tests/conftest.py).

A caller dials, `jego dial answer` answers (echo, reject, ring); audio is judged by content in
the caller's recording, outcomes by --json and the exit code.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from jego_call.media import analysis
from tests.conftest import PASSWORD, ROOT, LiveServer, make_user
from tests.helpers import wait_for

SPEECH = ROOT / "tests" / "data" / "speech_en_48k.wav"
DIAL = [sys.executable, "-m", "jego_call.cli.main", "dial"]


def _env() -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("JEGO_")}
    env["PYTHONUNBUFFERED"] = "1"
    return env


def dial(server: LiveServer, target: str, *args: str, user: str = "alice", password: str = PASSWORD,
         timeout: float = 60) -> tuple[int, dict[str, Any] | None, str]:
    """Run `jego dial call`; returns (exit code, parsed --json or None, stderr)."""
    cmd = [*DIAL, "call", target, "--server", server.url, "--user", user, "--password", password, *args]
    res = subprocess.run(cmd, cwd=ROOT, env=_env(), capture_output=True, text=True, timeout=timeout)
    out = res.stdout.strip()
    return res.returncode, json.loads(out.splitlines()[-1]) if out else None, res.stderr


class Answerer:
    """A `jego dial answer` subprocess; `results()` parses its JSON lines after it exits."""

    def __init__(self, server: LiveServer, user: str, args: list[str], tmp: Path) -> None:
        self.err_path = tmp / f"answer-{user}-{time.monotonic_ns()}.err"
        self.out_path = self.err_path.with_suffix(".out")
        cmd = [*DIAL, "answer", "--server", server.url, "--user", user, "--password", PASSWORD, "--json", *args]
        self.proc = subprocess.Popen(cmd, cwd=ROOT, env=_env(), stdout=open(self.out_path, "w"),  # noqa: SIM115
                                     stderr=open(self.err_path, "w"), text=True)  # noqa: SIM115
        def online() -> bool:
            assert self.proc.poll() is None, f"answerer exited:\n{self.err_path.read_text()}"
            return "waiting for calls" in self.err_path.read_text()

        wait_for(online, 30, "the answerer to come online")

    def wait(self, timeout: float = 30) -> int:
        return self.proc.wait(timeout)

    def results(self) -> list[dict[str, Any]]:
        return [json.loads(line) for line in self.out_path.read_text().splitlines() if line.strip()]

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(5)


@pytest.fixture
def users(live_server: LiveServer) -> LiveServer:
    for name in ("alice", "bob", "carol"):
        make_user(live_server, name)
    return live_server


@pytest.fixture
def answerer(tmp_path: Path) -> Iterator[Callable[..., Answerer]]:
    started: list[Answerer] = []

    def start(server: LiveServer, *args: str, user: str = "bob") -> Answerer:
        a = Answerer(server, user, list(args), tmp_path)
        started.append(a)
        return a

    yield start
    for a in started:
        a.stop()


def test_tone_through_echo(users: LiveServer, answerer: Callable[..., Answerer], tmp_path: Path) -> None:
    bob = answerer(users, "--echo", "--count", "1")
    rec = tmp_path / "tone.wav"
    tone_s = 5.0
    code, res, err = dial(users, "bob", "--play", f"tone:1000:-10:{tone_s:g}", "--duration", "6.5",
                          "--record", str(rec), "--dtmf", "5#", "--json")
    assert code == 0, err
    assert res is not None and res["outcome"] == "answered" and res["reason"] == "hangup"
    assert res["call_id"] and res["sip_code"] is None and res["q850_cause"] is None
    assert 0 <= res["ringing_ms"] <= res["setup_ms"] < 5000
    assert res["connected_s"] == pytest.approx(6.5, abs=0.5)
    audio = res["audio"]
    assert audio["packets_sent"] > 250 and audio["packets_received"] > 250 and audio["packets_lost"] == 0
    assert audio["dominant_hz"] == pytest.approx(1000, abs=20)
    assert audio["level_dbfs"] == pytest.approx(analysis.sine_rms_dbfs(-10), abs=2)
    for key in ("jitter_ms", "rtt_ms"):
        assert key in audio
    # the recording, judged by content
    x, rate = analysis.read_wav(rec)
    body = x[int(0.5 * rate): int(4.5 * rate)]
    assert analysis.dominant_frequency(body, rate) == pytest.approx(1000, abs=20)
    assert analysis.level_dbfs(body) == pytest.approx(analysis.sine_rms_dbfs(-10), abs=2)
    assert analysis.active_duration(x, rate) >= 0.95 * tone_s
    # progress went to stderr: dialing -> ringing -> connected -> per-second lines -> ended
    for word in ("dialing bob", "ringing", "connected", "level", "ended: answered"):
        assert word in err
    assert bob.wait() == 0
    (callee,) = bob.results()
    assert callee["outcome"] == "answered" and callee["call_id"] == res["call_id"]
    assert callee["dtmf_received"] == "5#"


@pytest.mark.slow
def test_speech_round_trip_pesq(users: LiveServer, answerer: Callable[..., Answerer], tmp_path: Path) -> None:
    answerer(users, "--echo", "--count", "1")
    rec = tmp_path / "speech.wav"
    ref, rate = analysis.read_wav(SPEECH)
    code, res, err = dial(users, "bob", "--play", str(SPEECH), "--duration", f"{ref.size / rate + 1.0:.1f}",
                          "--record", str(rec), "--json", "--quiet")
    assert code == 0, err
    assert err == ""  # --quiet
    deg, deg_rate = analysis.read_wav(rec)
    assert deg_rate == rate  # Opus arrives at 48 kHz and is recorded at the received rate
    score = analysis.pesq_score(ref, deg, rate, "wb")
    print(f"jego dial speech round trip (two Opus legs, 32 kb/s): PESQ wb {score:.2f}")
    assert score >= 3.3


@pytest.mark.parametrize(("reject", "outcome"), [("busy", "busy"), ("decline", "declined")])
def test_rejected(users: LiveServer, answerer: Callable[..., Answerer], reject: str, outcome: str) -> None:
    bob = answerer(users, "--reject", reject, "--count", "1")
    code, res, _err = dial(users, "bob", "--json", "--quiet")
    assert (code, res and res["outcome"]) == (3, outcome)
    assert res is not None and res["setup_ms"] is None and res["connected_s"] == 0
    assert bob.wait() == 0
    assert bob.results()[0]["outcome"] == outcome


def test_no_answer_from_server_ring_timeout(users: LiveServer, answerer: Callable[..., Answerer]) -> None:
    answerer(users, "--answer-after", "60")
    start = time.monotonic()
    code, res, err = dial(users, "bob", "--json")
    assert (code, res and res["outcome"]) == (4, "no_answer"), err
    assert res is not None and res["ringing_ms"] is not None
    assert 4 <= time.monotonic() - start < 20  # the fixture's server rings for 5 s


def test_no_answer_from_our_ring_timeout(users: LiveServer, answerer: Callable[..., Answerer]) -> None:
    answerer(users, "--answer-after", "60")
    code, res, _err = dial(users, "bob", "--ring-timeout", "1", "--json", "--quiet")
    assert (code, res and res["outcome"], res and res["reason"]) == (4, "no_answer", "no_answer")


def test_callee_hangs_up(users: LiveServer, answerer: Callable[..., Answerer]) -> None:
    answerer(users, "--echo", "--duration", "1", "--count", "1")
    code, res, _err = dial(users, "bob", "--duration", "20", "--json", "--quiet")
    assert code == 0
    assert res is not None and res["outcome"] == "answered" and res["by"] == "bob"
    assert res["connected_s"] < 5


def test_offline_and_unknown(users: LiveServer) -> None:
    code, res, _ = dial(users, "carol", "--json", "--quiet")
    assert (code, res and res["outcome"]) == (4, "unavailable")
    code, res, _ = dial(users, "nobody", "--json", "--quiet")
    assert (code, res and res["outcome"]) == (5, "invalid_number")


def _one_line(err: str) -> str:
    lines = [line for line in err.splitlines() if line.strip()]
    assert len(lines) == 1, err
    assert "Traceback" not in err
    return lines[0]


def test_bad_invocations(users: LiveServer, tmp_path: Path) -> None:
    code, _, err = dial(users, "bob", password="wrong-password")
    assert code == 1 and "wrong username or password" in _one_line(err)
    code, _, err = dial(users, "bob", "--server", "http://127.0.0.1:9")  # later --server wins
    assert code == 1 and "cannot reach" in _one_line(err)
    code, _, err = dial(users, "bob", "--play", str(tmp_path / "missing.wav"))
    assert code == 2 and "missing.wav" in _one_line(err)
    code, _, err = dial(users, "bob", "--play", "tone:loud")
    assert code == 2 and "tone" in _one_line(err)
    res = subprocess.run([*DIAL, "call", "bob", "--server", users.url], cwd=ROOT, env=_env(),
                         capture_output=True, text=True, timeout=60)
    assert res.returncode == 2 and "--user" in _one_line(res.stderr)


def test_impaired_receive_path_loses_what_it_was_told(users: LiveServer, answerer: Callable[..., Answerer]) -> None:
    """--impair drops received datagrams below DTLS/SRTP: the receiver's RTP stats see the loss."""
    bob = answerer(users, "--echo", "--count", "1", "--send-fec", "20")
    code, res, err = dial(users, "bob", "--play", "tone:1000:-10", "--duration", "6", "--json",
                          "--impair", "loss=20,seed=3")
    assert code == 0, err
    audio = res["audio"] if res else {}
    imp = audio["impairment"]
    assert imp["spec"] == "loss=20,seed=3" and imp["received"] > 250
    assert imp["dropped"] / imp["received"] == pytest.approx(0.20, abs=0.05)
    lost, got = audio["packets_lost"], audio["packets_received"]
    assert lost / (lost + got) == pytest.approx(0.20, abs=0.06)  # aiortc's RTP counters agree
    assert audio["dominant_hz"] == pytest.approx(1000, abs=20)  # still the tone, concealed where lost
    loss = audio["loss"]  # the dialer's receive path (media/receive.py); bob's echo carries FEC (--send-fec)
    assert loss["fec"] is True and loss["lost_frames"] > 40 and loss["fec_recovered"] > 10
    assert 0 < loss["concealed_frames"] and loss["fec_recovered"] + loss["concealed_frames"] <= loss["lost_frames"]
    assert bob.wait() == 0
    code, _, err = dial(users, "bob", "--impair", "loss=200")
    assert code == 2 and "impair" in _one_line(err)

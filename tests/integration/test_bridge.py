"""The SIP bridge end to end: `jego dial` -> `jego serve` (signalling + in-process bridge worker on
pyVoIP) -> the simulated carrier over SIP/RTP on 127.0.0.1, and back. Audio is judged by content
(PESQ, tone frequency and level) in the carrier's recordings and the dialer's; outcomes by the
dialer's exit code and JSON, the carrier's call records and /api/calls.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from jego_call.media import analysis
from tests.conftest import LiveServer, http_json

from .bridge_util import (
    HANGS_UP,
    PLAIN,
    SPEECH,
    TONE_1K,
    carrier_call,
    carrier_record,
    phone_server,
    segment,
    speech_8k,
    tone_ok,
)
from .test_dial import Answerer, dial

ECHO_NUMBER = "+8613800138000"
BOB_DID = "+8675512345678"


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LiveServer]:
    s = phone_server(tmp_path_factory.mktemp("bridge"))
    yield s
    s.stop()


def history(server: LiveServer, user: str = "alice") -> list[dict[str, Any]]:
    status, body = http_json("POST", f"{server.url}/api/login", {"username": user, "password": "correct-horse-9"})
    assert status == 200
    status, body = http_json("GET", f"{server.url}/api/calls?limit=5", token=body["token"])
    assert status == 200
    return list(body["calls"])


def test_speech_both_ways(server: LiveServer, tmp_path: Path) -> None:
    echo = tmp_path / "echo.wav"
    rc, res, err = dial(server, ECHO_NUMBER, "--play", str(SPEECH), "--record", str(echo), "--json",
                        "--duration", "17.5")
    assert rc == 0, err
    assert res is not None and res["outcome"] == "answered" and res["codec"] == "opus"
    cdr = carrier_record(server, ECHO_NUMBER)
    assert cdr["outcome"] == "hangup" and cdr["codec"] in ("PCMU", "PCMA")
    heard, rate = analysis.read_wav(cdr["recording"])
    assert rate == 8000
    to_phone = analysis.pesq_score(speech_8k(), heard, 8000, mode="nb")
    src, src_rate = analysis.read_wav(SPEECH)
    back, back_rate = analysis.read_wav(echo)
    round_trip = analysis.pesq_score(src, analysis.resample(back, back_rate, src_rate), src_rate, mode="nb")
    print(f"PESQ nb: app->phone {to_phone:.2f}, echo round trip {round_trip:.2f}")
    assert to_phone >= 3.6
    assert round_trip >= 3.3
    # the call record has the bridge's report
    [rec, *_] = history(server)
    assert rec["call_id"] == res["call_id"] and rec["peer_kind"] == "phone" and rec["outcome"] == "hangup"
    assert rec["codec"] == f"opus/{cdr['codec']}"
    assert rec["phone"]["packets_sent"] > 800 and rec["app"]["packets_received"] > 800


def test_tones_both_ways(server: LiveServer, tmp_path: Path) -> None:
    rec_path = tmp_path / "heard.wav"
    rc, res, err = dial(server, TONE_1K, "--play", "tone:700:-10", "--record", str(rec_path), "--json",
                        "--duration", "5")
    assert rc == 0, err
    expected = analysis.sine_rms_dbfs(-10.0)
    # app -> phone: the carrier heard our 700 Hz
    heard, rate = analysis.read_wav(carrier_record(server, TONE_1K)["recording"])
    ok, hz, lvl = tone_ok(segment(heard, rate, 1.0, 4.0), rate, 700.0, expected)
    assert ok, (hz, lvl)
    # phone -> app: the carrier's 1 kHz (its first 3 s after the answer)
    got, rate = analysis.read_wav(rec_path)
    ok, hz, lvl = tone_ok(segment(got, rate, 0.5, 2.5), rate, 1000.0, expected)
    assert ok, (hz, lvl)


@pytest.mark.parametrize(
    ("number", "exit_code", "reason", "sip", "q850"),
    [("+8613900000486", 3, "busy", 486, 17), ("+8613900000480", 4, "no_answer", 480, 19),
     ("+8613900000408", 4, "timeout", 408, 18), ("+8613900000404", 5, "not_found", 404, 1),
     ("+8613900000503", 1, "congestion", 503, 34), ("+8613900000020", 4, "switched_off", 480, 20)],
)
def test_carrier_outcomes(server: LiveServer, number: str, exit_code: int, reason: str, sip: int, q850: int) -> None:
    rc, res, err = dial(server, number, "--json")
    assert res is not None, err
    assert (rc, res["reason"], res["sip_code"], res["q850_cause"]) == (exit_code, reason, sip, q850), res
    assert res["detail"] and "ended:" in err  # plain words for people
    if number in ("+8613900000486", "+8613900000404"):
        assert res["early_media_ms"] is not None  # the announcement played before the outcome
    rec = history(server)[0]
    assert (rec["outcome"], rec["sip_code"], rec["q850_cause"]) == (reason, sip, q850)


def test_invalid_number_never_reaches_the_carrier(server: LiveServer) -> None:
    before = len((server.data_dir / "carrier" / "cdr.jsonl").read_text().splitlines())
    rc, res, _ = dial(server, "+86123", "--json")
    assert rc == 5 and res is not None and res["reason"] == "invalid_number"
    assert len((server.data_dir / "carrier" / "cdr.jsonl").read_text().splitlines()) == before


def test_dtmf_reaches_the_carrier_in_order(server: LiveServer) -> None:
    rc, res, err = dial(server, PLAIN, "--dtmf", "0123456789*#", "--duration", "5", "--json")
    assert rc == 0, err
    assert carrier_record(server, PLAIN)["dtmf"] == "0123456789*#"


def test_cancel_while_ringing(server: LiveServer) -> None:
    rc, res, err = dial(server, "+8613900000480", "--ring-timeout", "1", "--json")
    assert res is not None, err
    assert rc == 4 and res["outcome"] == "no_answer" and res["ringing_ms"] is not None
    cdr = carrier_record(server, "+8613900000480")
    assert cdr["sip_code"] == 487 and cdr["answer"] is None, cdr  # our CANCEL got 487 (RFC 3261 §9.1)
    assert history(server)[0]["outcome"] == "cancelled"


def test_phone_hangs_up_first(server: LiveServer) -> None:
    rc, res, err = dial(server, HANGS_UP, "--duration", "15", "--json")
    assert rc == 0 and res is not None, err
    assert res["reason"] == "hangup" and res["by"] == HANGS_UP and res["q850_cause"] == 16
    assert res["connected_s"] < 6
    assert carrier_record(server, HANGS_UP)["outcome"] == "hangup"


def test_inbound_call_rings_bob_and_they_talk(server: LiveServer, tmp_path: Path) -> None:
    bob = Answerer(server, "bob", ["--echo", "--count", "1"], tmp_path)
    rc, res = carrier_call(server, ECHO_NUMBER, BOB_DID, "--play", str(SPEECH), "--duration", "17.5")
    assert rc == 0 and res["answered"], res
    assert bob.wait() == 0
    heard, rate = analysis.read_wav(res["recording"])
    score = analysis.pesq_score(speech_8k(), heard, rate, mode="nb")
    print(f"PESQ nb: phone -> bob's echo -> phone {score:.2f}")
    assert score >= 3.3
    rec = history(server, "bob")[0]
    assert rec["direction"] == "incoming" and rec["peer"] == ECHO_NUMBER and rec["answered_at"] is not None


def test_inbound_with_nobody_online_gets_480(server: LiveServer) -> None:
    rc, res = carrier_call(server, ECHO_NUMBER, BOB_DID, "--duration", "2")
    assert rc == 1 and res["code"] == 480 and not res["answered"], res
    assert history(server, "bob")[0]["outcome"] == "unavailable"


def test_inbound_to_an_unknown_did_gets_404(server: LiveServer) -> None:
    rc, res = carrier_call(server, ECHO_NUMBER, "+8675500000000", "--duration", "2")
    assert rc == 1 and res["code"] == 404, res

"""The per-call quality score judged against the audio itself.

This kernel has no netem: the loss comes from `jego dial --impair` (a seeded drop of received
datagrams below SRTP, jego_call/media/impair.py) on the WebRTC leg, bridge -> app. Three
calls to the carrier's echo number at 0 %, 3 % and 10 % loss: the E-model MOS of each (what
`jego dial --json` reports, and what the call record holds from the bridge's call_report) falls
in that order, and so does PESQ measured on the same calls' recordings (speech out, through the
bridge and the carrier's echo, back); the three calls run at once, one caller each. The loss calls use Opus on the WebRTC leg (its PLC keeps
PESQ off the floor, so the order is audible) without in-band FEC (`--no-fec`): the E-model's loss
term is for concealed loss, and with FEC the 3 % call's frames came back nearly whole (about 0.2
PESQ below the clean call, within a loaded machine's noise; PLC alone: about 0.7). A clean G.711
call end to end (`[bridge] app_codec = "pcmu"`) estimates MOS >= 4.1.
"""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import pytest

from jego_call.media import analysis
from tests.conftest import PASSWORD, LiveServer, http_json, make_user, top_up

from .bridge_util import SPEECH, phone_server
from .test_dial import dial

ECHO_NUMBER = "+8613800138000"
LOSSES = (0, 3, 10)


def records(server: LiveServer, user: str = "alice") -> dict[str, dict[str, Any]]:
    status, body = http_json("POST", f"{server.url}/api/login", {"username": user, "password": PASSWORD})
    assert status == 200
    status, body = http_json("GET", f"{server.url}/api/calls?limit=10", token=body["token"])
    assert status == 200
    return {r["call_id"]: r for r in body["calls"]}


def call(server: LiveServer, rec: Path, loss: int, *extra: str, user: str = "alice") -> tuple[dict[str, Any], float]:
    """One call to the echo number with `loss` % seeded loss on the app's receive path: (jego dial
    --json, PESQ nb of the recorded round trip against the speech sent)."""
    src, src_rate = analysis.read_wav(SPEECH)
    impair = ["--impair", f"loss={loss},seed=11"] if loss else []
    rc, res, err = dial(server, ECHO_NUMBER, "--play", str(SPEECH), "--record", str(rec),
                        "--duration", f"{src.size / src_rate + 1.0:.1f}", "--json", "--quiet", *impair, *extra,
                        user=user)
    assert rc == 0 and res is not None and res["outcome"] == "answered", err
    back, back_rate = analysis.read_wav(rec)
    return res, analysis.pesq_score(src, analysis.resample(back, back_rate, src_rate), src_rate, mode="nb")


@pytest.mark.slow
def test_mos_falls_with_loss_and_agrees_with_pesq(tmp_path: Path) -> None:
    server = phone_server(tmp_path / "srv")   # Opus on the WebRTC leg, G.711 to the carrier
    callers = ("alice", "bob", "carol")
    try:
        make_user(server, "carol")
        top_up(server, "carol", 5000)
        # the three calls at once, one caller each (the bridge carries them side by side), PLC only
        with ThreadPoolExecutor(len(LOSSES)) as pool:
            done = [pool.submit(call, server, tmp_path / f"echo-{loss}.wav", loss, "--no-fec", user=who)
                    for loss, who in zip(LOSSES, callers, strict=True)]
            results = [(loss, *f.result()) for loss, f in zip(LOSSES, done, strict=True)]
        stored = {cid: r for who in callers for cid, r in records(server, who).items()}
    finally:
        server.stop()
    for loss, res, score in results:
        lost, got = res["audio"]["packets_lost"], res["audio"]["packets_received"]
        print(f"loss {loss:2d} %: received {got}, lost {lost} ({100 * lost / (lost + got):.1f} %), "
              f"MOS dial {res['mos']:.2f} record {stored[res['call_id']]['mos']}, PESQ nb {score:.2f}")
        if loss:  # the impairment did what it was told (within the randomness of 800 packets)
            assert lost / (lost + got) == pytest.approx(loss / 100, abs=0.02)
        else:
            assert lost == 0
    dial_mos = [res["mos"] for _, res, _ in results]
    record_mos = [stored[res["call_id"]]["mos"] for _, res, _ in results]
    pesq = [score for _, _, score in results]
    assert dial_mos[0] > dial_mos[1] > dial_mos[2], dial_mos
    assert record_mos[0] > record_mos[1] > record_mos[2], record_mos
    assert pesq[0] > pesq[1] > pesq[2], pesq        # the ear agrees with the estimate's order
    assert [stored[res["call_id"]]["quality"] for _, res, _ in results][0] == "good"


@pytest.mark.slow
def test_clean_g711_call_estimates_mos_of_at_least_4_1(tmp_path: Path) -> None:
    server = phone_server(tmp_path / "srv", JEGO_BRIDGE_APP_CODEC="pcmu")   # G.711 end to end
    try:
        res, score = call(server, tmp_path / "clean.wav", 0, "--codec", "PCMU")
        rec = records(server)[res["call_id"]]
    finally:
        server.stop()
    print(f"clean G.711: MOS dial {res['mos']}, record {rec['mos']} (R {rec['r_factor']}), PESQ nb {score:.2f}")
    assert res["codec"].upper() == "PCMU" and rec["codec"].upper() == "PCMU", (res, rec)
    assert res["mos"] >= 4.1 and rec["mos"] >= 4.1 and rec["quality"] == "good"
    assert res["audio"]["packets_lost"] == 0 and res["audio"]["packets_received"] > 700

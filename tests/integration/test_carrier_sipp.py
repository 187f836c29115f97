"""sipp (a real SIP tool) against the carrier: digest REGISTER, authenticated INVITE with RTP
and RFC 4733 DTMF (single call judged by the recording's content, then 10 calls/s x 100 with
0 failed), busy, unallocated, no answer, CANCEL while ringing, and a missing ACK."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from bridge.carrier.media import load_wav

from .carrier_util import (
    SIPP,
    SPEECH_PCAP,
    best_correlation,
    pcap_audio,
    run_sipp,
    running_carrier,
    wait_records,
)

pytestmark = [pytest.mark.skipif(SIPP is None, reason="sipp is not installed (apt install sip-tester)"),
              pytest.mark.timeout(180)]


async def test_register_then_invite_with_rtp_and_dtmf(tmp_path: Path) -> None:
    async with running_carrier(tmp_path / "data") as carrier:
        reg = await run_sipp(carrier, "register_auth.xml", "jego", tmp_path)
        assert reg.rc == 0, reg.output + reg.errors
        assert carrier.stats["challenges"] >= 1
        assert [b["contact"] for b in carrier.status()["registrations"]]

        run = await run_sipp(carrier, "invite_auth_echo.xml", "+8613800138000", tmp_path)
        assert run.rc == 0, run.output + run.errors
        assert run.stats["SuccessfulCall(C)"] == "1" and run.stats["FailedCall(C)"] == "0"
        [rec] = await wait_records(carrier, 1)
    assert (rec.to, rec.sip_code, rec.q850_cause, rec.outcome) == ("+8613800138000", 200, 16, "hangup")
    assert rec.number_type == "mobile" and rec.operator == "China Mobile"
    assert rec.codec == "PCMA" and rec.dtmf == "1"
    assert rec.answer is not None and 5.0 < rec.duration_s < 9.0
    # The carrier recorded what sipp played: the pcap's audio is found in the recording.
    assert rec.recording is not None
    recorded, rate = load_wav(rec.recording)
    assert rate == 8000
    speech = pcap_audio(SPEECH_PCAP)
    # Three 1 s stretches of the 5 s played, each found whole in at least one of its halves: the
    # carrier's adaptive playout may drop a frame of a burst (sipp's pcap timing on a loaded
    # machine), which splits the alignment of the second around it.
    for start in (4000, 16000, 28000):
        halves = [best_correlation(speech[s:s + 4000], recorded) for s in (start, start + 4000)]
        assert max(halves) > 0.9, halves
    assert best_correlation(speech[4000:12000][::-1], recorded) < 0.5  # the judge can say no


async def test_load_10_calls_per_second_100_calls(tmp_path: Path) -> None:
    async with running_carrier(tmp_path / "data", max_calls=200) as carrier:
        run = await run_sipp(carrier, "invite_auth_echo.xml", "+8613800138000", tmp_path,
                             calls=100, rate=10, limit=100, timeout=150)
        assert run.rc == 0, run.output[-3000:] + run.errors[-3000:]
        assert run.stats["SuccessfulCall(C)"] == "100", run.stats
        assert run.stats["FailedCall(C)"] == "0", run.stats
        records = await wait_records(carrier, 100, timeout=30)
    assert len(records) == 100
    assert all(r.sip_code == 200 and r.dtmf == "1" and r.codec == "PCMA" for r in records), \
        [(r.call_id, r.sip_code, r.dtmf) for r in records if r.sip_code != 200 or r.dtmf != "1"]
    assert carrier.stats["answered"] == 100 and carrier.stats["ack_timeouts"] == 0


@pytest.mark.parametrize(("scenario", "number", "code", "cause"), [
    ("busy_486.xml", "+8613900000486", 486, 17),
    ("unallocated_404.xml", "+8613900000404", 404, 1),
    ("no_answer_480.xml", "+8613900000480", 480, 19),
    ("no_answer_480.xml", "+8613900000020", 480, 20),
])
async def test_failures_with_reason(tmp_path: Path, scenario: str, number: str, code: int, cause: int) -> None:
    async with running_carrier(tmp_path / "data", sip={"ring_timeout_s": 2.0}) as carrier:
        run = await run_sipp(carrier, scenario, number, tmp_path, trace_msg=True)
        assert run.rc == 0, run.output + run.errors
        [rec] = await wait_records(carrier, 1)
    # The final response carries RFC 3326 Reason with the cause.
    assert re.search(rf"SIP/2.0 {code} .*?Reason: Q\.850;cause={cause}\b", run.messages, re.S)
    assert (rec.to, rec.sip_code, rec.q850_cause, rec.answer) == (number, code, cause, None)
    if scenario != "no_answer_480.xml":
        assert "SIP/2.0 183" in run.messages  # announcement as early media
        assert rec.recording is not None


async def test_no_answer_rings_for_the_ring_timeout(tmp_path: Path) -> None:
    async with running_carrier(tmp_path / "data", sip={"ring_timeout_s": 3.0}) as carrier:
        run = await run_sipp(carrier, "no_answer_480.xml", "+8613900000480", tmp_path)
        assert run.rc == 0, run.output + run.errors
        [rec] = await wait_records(carrier, 1)
    from datetime import datetime
    took = (datetime.fromisoformat(rec.end.replace("Z", "+00:00"))
            - datetime.fromisoformat(rec.start.replace("Z", "+00:00"))).total_seconds()
    assert 2.9 < took < 4.5


async def test_cancel_while_ringing(tmp_path: Path) -> None:
    async with running_carrier(tmp_path / "data") as carrier:
        run = await run_sipp(carrier, "cancel_ringing.xml", "+8613900000480", tmp_path, trace_msg=True)
        assert run.rc == 0, run.output + run.errors
        [rec] = await wait_records(carrier, 1)
    assert re.search(r"SIP/2.0 200 OK\r?\n(?:[^\r\n]+\r?\n)*?CSeq: 2 CANCEL", run.messages)
    assert re.search(r"SIP/2.0 487 .*?CSeq: 2 INVITE", run.messages, re.S)
    assert (rec.sip_code, rec.outcome) == (487, "cancelled")
    assert carrier.active_calls == 0


async def test_missing_ack_retransmits_200_then_byes(tmp_path: Path) -> None:
    # T1 = 0.1 s: Timer H = 64*T1 = 6.4 s instead of 32 s.
    async with running_carrier(tmp_path / "data", t1=0.1) as carrier:
        run = await run_sipp(carrier, "missing_ack.xml", "+8613800138000", tmp_path, trace_msg=True)
        assert run.rc == 0, run.output + run.errors
        [rec] = await wait_records(carrier, 1)
    before_bye = run.messages.split("BYE sip:", 1)[0]
    oks = re.findall(r"SIP/2.0 200 OK\r?\n(?:[^\r\n]+\r?\n)*?CSeq: 2 INVITE", before_bye)
    assert len(oks) >= 5, f"only {len(oks)} 200 OK before the BYE"
    assert re.search(r"BYE sip:.*?Reason: Q\.850;cause=102", run.messages, re.S)
    assert carrier.stats["ack_timeouts"] == 1
    assert (rec.sip_code, rec.outcome, rec.q850_cause) == (200, "ack_timeout", 102)
    assert 6.0 < rec.duration_s < 9.0

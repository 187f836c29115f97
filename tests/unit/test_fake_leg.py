"""FakeLeg keeps the SipLeg contract the bridge relies on (legs.py): events in order, exactly one
LegEnded, an idempotent hangup, CANCEL while ringing, BYE once answered, reject of an inbound call."""

from __future__ import annotations

import asyncio

import pytest

from bridge.gateway.fakes import FakeLeg
from bridge.gateway.legs import FRAME_BYTES, LegAnswered, LegEnded, LegEvent, LegRinging
from jego_call.call.reasons import EndReason


def drain(q: asyncio.Queue[LegEvent]) -> list[LegEvent]:
    out = []
    while not q.empty():
        out.append(q.get_nowait())
    return out


async def test_outbound_script_then_one_end() -> None:
    leg = FakeLeg("c", on_dial=[LegRinging(180, False), LegRinging(183, True)])
    await leg.dial("+8613800138000")
    assert leg.state == "ringing" and leg.dialled == "+8613800138000"
    await leg.hangup(16)  # CANCEL while ringing ends the leg (cancel_ends)
    await leg.hangup(16)  # idempotent
    leg.remote_answer()   # nothing after the end
    assert drain(leg.events) == [LegRinging(180, False), LegRinging(183, True),
                                 LegEnded(EndReason.CANCELLED, 487, 16, remote=False)]
    assert leg.calls == [("dial", ("+8613800138000",)), ("hangup", (16,)), ("hangup", (16,))]
    with pytest.raises(RuntimeError):
        await leg.dial("+8613800138000")


async def test_cancel_pending_then_a_crossing_200_then_bye() -> None:
    leg = FakeLeg("c", cancel_ends=False)
    await leg.dial("+8613800138000")
    leg.ring()
    await leg.hangup(16)
    assert leg.state == "cancelling" and not leg.ended
    leg.answer_crossing_cancel()
    await leg.hangup(16)
    assert drain(leg.events) == [LegRinging(180, False), LegAnswered("PCMU"),
                                 LegEnded(EndReason.HANGUP, None, 16, remote=False)]


async def test_inbound_answer_and_reject() -> None:
    leg = FakeLeg("i", inbound=True, codec="PCMA")
    await leg.answer()
    assert leg.codec == "PCMA" and drain(leg.events) == [LegAnswered("PCMA")]
    other = FakeLeg("j", inbound=True)
    await other.reject(486, 17)
    await other.answer()  # refused already: never answered
    assert drain(other.events) == [LegEnded(EndReason.BUSY, 486, 17, remote=False)]


async def test_audio_both_ways_and_errors() -> None:
    leg = FakeLeg("c")
    frame = bytes(FRAME_BYTES)
    leg.feed_audio(frame)
    assert leg.read_audio() == frame and leg.read_audio() is None
    leg.send_audio(frame)
    assert list(leg.sent_audio) == [frame] and leg.stats() == {"tx_packets": 1, "rx_packets": 1}
    with pytest.raises(ValueError, match="320 bytes"):
        leg.send_audio(b"\x00" * 100)
    leg.dial_error = ConnectionError("trunk down")
    with pytest.raises(ConnectionError):
        await leg.dial("+8613800138000")
    await leg.send_dtmf("12")
    assert leg.dtmf_sent == "12"

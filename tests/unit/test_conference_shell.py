"""bridge/gateway/conference.py, the asyncio shell of a group call's conference, with phone legs
that are `FakeLeg`s (no SIP, no sockets): the small playout FIFO between a leg's clock and the
mixer's (prefill, restart after running dry, trimmed back, order kept), a phone leg's frames
in and out, the N-1 mix (a phone hears the other phone's tone, never its own; muted is not
heard), and the driver: an added phone is dialled and reported to the server, two phones in one
conference hear each other on the shell's own 20 ms clock, a failed dial is declined, and a
close hangs every phone up, sends its call_report and finishes once.
"""

from __future__ import annotations

import asyncio
from typing import Any, cast

import numpy as np
import numpy.typing as npt
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from bridge.gateway.call_core import CallSettings
from bridge.gateway.conference import Conference, PhoneLeg, Playout
from bridge.gateway.conference_core import PhoneInvite, PhoneServer, ToServer
from bridge.gateway.fakes import FakeLeg
from bridge.gateway.legs import FRAME_SAMPLES, LegAnswered, LegRinging, SipLeg, SipTrunk

Pcm = npt.NDArray[np.int16]
CALL = "grp-1"


def frame(value: int) -> Pcm:
    return np.full(FRAME_SAMPLES, value, dtype=np.int16)


def tone_frame(n: int, hz: float = 1000.0, amplitude: float = 8000.0) -> Pcm:
    t = (n * FRAME_SAMPLES + np.arange(FRAME_SAMPLES)) / 8000
    return np.rint(amplitude * np.sin(2 * np.pi * hz * t)).astype(np.int16)


# --- the playout FIFO -------------------------------------------------------------------------------
def test_playout_waits_for_its_prefill_then_plays_in_order() -> None:
    p = Playout(prefill=2, max_frames=6)
    p.push(frame(1))
    assert p.pop() is None and not p.playing                       # one is not enough
    p.push(frame(2))
    got = [p.pop(), p.pop()]
    assert [int(f[0]) for f in got if f is not None] == [1, 2]
    assert p.pop() is None and p.underruns == 1 and not p.playing  # ran dry: refill before playing again
    p.push(frame(3))
    assert p.pop() is None
    p.push(frame(4))
    popped = p.pop()
    assert popped is not None and int(popped[0]) == 3


def test_playout_trims_back_to_its_prefill_when_too_full() -> None:
    p = Playout(prefill=2, max_frames=6)
    for i in range(7):
        p.push(frame(i))
    assert [int(f[0]) for f in p.buf] == [5, 6] and p.trimmed == 5  # the newest kept: no lasting delay


@settings(max_examples=200, deadline=None)
@given(st.lists(st.booleans(), max_size=200), st.integers(1, 4), st.integers(0, 6))
def test_playout_never_holds_too_much_and_keeps_order(ops: list[bool], prefill: int, extra: int) -> None:
    p = Playout(prefill=prefill, max_frames=prefill + extra)
    n = played = 0
    last = -1
    for push in ops:
        if push:
            p.push(frame(n))
            n += 1
        else:
            out = p.pop()
            if out is not None:
                assert int(out[0]) > last                           # never backwards, never twice
                last = int(out[0])
                played += 1
        assert len(p.buf) <= prefill + extra
        assert played + p.trimmed + len(p.buf) == n                # every frame played, trimmed or held


# --- a phone leg ------------------------------------------------------------------------------------
def test_a_phone_leg_takes_everything_pending_and_plays_it_in_order() -> None:
    fake = FakeLeg("p1")
    leg = PhoneLeg(cast(SipLeg, fake))
    for i in range(3):
        fake.feed_audio(frame(i + 1).tobytes())
    first = leg.read_frame()
    assert first is not None and int(first[0]) == 1 and leg.received == 3 and fake.frames_read == 3
    second = leg.read_frame()
    assert second is not None and int(second[0]) == 2
    leg.write_frame(frame(9))
    assert leg.sent == 1 and fake.sent_audio[-1] == frame(9).tobytes()


def test_a_phone_leg_that_raises_on_read_gives_nothing() -> None:
    class Broken(FakeLeg):
        def read_audio(self) -> bytes | None:
            raise RuntimeError("the leg has ended")

    leg = PhoneLeg(cast(SipLeg, Broken("p1")))
    assert leg.read_frame() is None and leg.received == 0


# --- the N-1 mix ------------------------------------------------------------------------------------
def settings_() -> CallSettings:
    return CallSettings()


def conference(on_done: Any = None) -> Conference:
    async def send(msg: dict[str, Any]) -> None:
        pass

    return Conference(CALL, cast(SipTrunk, None), send, settings_(), on_done=on_done)


def level(pcm_bytes: bytes) -> float:
    x = np.frombuffer(pcm_bytes, dtype=np.int16).astype(np.float64)
    return float(np.sqrt(np.mean(x ** 2)))


async def test_each_phone_hears_the_other_and_never_itself() -> None:
    conf = conference()
    a, b = FakeLeg("a"), FakeLeg("b")
    conf.phones = {"a": PhoneLeg(cast(SipLeg, a)), "b": PhoneLeg(cast(SipLeg, b))}
    for n in range(10):
        a.feed_audio(tone_frame(n).tobytes())
        conf._mix_once(["a", "b"], set())
    assert conf.stats.frames == 10 and conf.stats.leg_frames == 20
    heard_by_b = b"".join(list(b.sent_audio)[2:])          # after a's prefill of two frames
    assert level(heard_by_b) > 5000                          # a's tone, at its level (8000 peak: RMS 5657)
    spectrum = np.abs(np.fft.rfft(np.frombuffer(heard_by_b, dtype=np.int16) * 1.0))
    assert abs(np.argmax(spectrum) * 8000 / (len(heard_by_b) // 2) - 1000) < 10
    assert all(level(f) == 0 for f in a.sent_audio)          # a hears nobody: b is silent, a is not echoed


async def test_a_muted_phone_is_not_heard() -> None:
    conf = conference()
    a, b = FakeLeg("a"), FakeLeg("b")
    conf.phones = {"a": PhoneLeg(cast(SipLeg, a)), "b": PhoneLeg(cast(SipLeg, b))}
    for n in range(6):
        a.feed_audio(tone_frame(n).tobytes())
        conf._mix_once(["a", "b"], {"a"})
    assert all(level(f) == 0 for f in b.sent_audio) and len(b.sent_audio) == 6


# --- the driver with a trunk of fake legs -------------------------------------------------------------
class HearingLeg(FakeLeg):
    """A FakeLeg that says when a loud frame was sent to it."""

    def __init__(self, call_id: str, **kw: Any) -> None:
        super().__init__(call_id, **kw)
        self.heard = asyncio.Event()

    def send_audio(self, pcm: bytes) -> None:
        super().send_audio(pcm)
        if level(pcm) > 1000:
            self.heard.set()


class FakeTrunk:
    def __init__(self, answer: bool = True) -> None:
        self.legs: dict[str, HearingLeg] = {}
        self.answer = answer
        self.dial_error: Exception | None = None

    def new_leg(self, call_id: str) -> SipLeg:
        on_dial = [LegRinging(180, False), LegAnswered("PCMA")] if self.answer else [LegRinging(180, False)]
        leg = HearingLeg(call_id, on_dial=on_dial)
        leg.dial_error = self.dial_error
        self.legs[call_id] = leg
        return cast(SipLeg, leg)


class Outbox:
    """What the conference sent to the server, and a way to wait for one message."""

    def __init__(self) -> None:
        self.msgs: list[dict[str, Any]] = []
        self._changed = asyncio.Event()

    async def send(self, msg: dict[str, Any]) -> None:
        self.msgs.append(msg)
        self._changed.set()

    async def wait_for(self, kind: str, call_id: str) -> dict[str, Any]:
        async def find() -> dict[str, Any]:
            while True:
                for m in self.msgs:
                    if m.get("type") == kind and m.get("call_id") == call_id:
                        return m
                self._changed.clear()
                await self._changed.wait()
        return await asyncio.wait_for(find(), 5)


def shell(trunk: FakeTrunk, box: Outbox, done: list[Conference]) -> Conference:
    return Conference(CALL, cast(SipTrunk, trunk), box.send, settings_(), on_done=done.append)


async def test_two_phones_added_are_dialled_reported_and_hear_each_other() -> None:
    trunk, box = FakeTrunk(), Outbox()
    done: list[Conference] = []
    conf = shell(trunk, box, done)
    conf.post(PhoneInvite("p1", "+8613800138000", "mum"))
    conf.post(PhoneInvite("p2", "+8613900139000", "dad"))
    assert (await box.wait_for("ringing", "p1"))["sip_code"] == 180
    await box.wait_for("accept", "p1")
    await box.wait_for("accept", "p2")
    p1, p2 = trunk.legs["p1"], trunk.legs["p2"]
    assert p1.dialled == "+8613800138000" and p2.dialled == "+8613900139000"
    assert conf.owns("p1") and conf.owns("p2") and not conf.owns("p3")
    for n in range(30):                                   # p1 speaks; the shell's clock mixes it for p2
        p1.feed_audio(tone_frame(n).tobytes())
    await asyncio.wait_for(p2.heard.wait(), 5)
    assert not p1.heard.is_set()                           # p1 never hears itself
    await conf.close("hangup")
    assert done == [conf] and conf.done.is_set()
    assert ("hangup", (16,)) in p1.calls and ("hangup", (16,)) in p2.calls
    reports = [m for m in box.msgs if m["type"] == "call_report"]
    assert sorted(r["call_id"] for r in reports) == ["p1", "p2"]
    r1 = next(r for r in reports if r["call_id"] == "p1")
    assert r1["codec"] == "PCMA" and r1["phone"]["packets_received"] >= 2
    assert not any(m["type"] == "hangup" for m in box.msgs)   # the server ended it: told nothing more
    assert conf.stats.frames > 0 and conf._clock is None
    await conf.close("again")                              # closing twice: nothing happens
    assert done == [conf]


async def test_a_dial_that_fails_is_declined_and_the_leg_reported() -> None:
    trunk, box = FakeTrunk(), Outbox()
    done: list[Conference] = []
    trunk.dial_error = ConnectionError("trunk down")
    conf = shell(trunk, box, done)
    conf.post(PhoneInvite("p1", "+8613800138000", "mum"))
    decline = await box.wait_for("decline", "p1")
    assert decline["reason"] == "failed"
    await box.wait_for("call_report", "p1")
    assert not conf.owns("p1")
    await conf.close("hangup")
    assert done == [conf]


async def test_the_server_ending_a_ringing_phone_hangs_it_up() -> None:
    trunk, box = FakeTrunk(answer=False), Outbox()
    done: list[Conference] = []
    conf = shell(trunk, box, done)
    conf.post(PhoneInvite("p1", "+8613800138000", "mum"))
    await box.wait_for("ringing", "p1")
    conf.post(PhoneServer("p1", {"type": "cancel", "call_id": "p1"}))
    await box.wait_for("call_report", "p1")
    leg = trunk.legs["p1"]
    assert ("hangup", (16,)) in leg.calls and leg.ended            # CANCEL while ringing
    assert not any(m["type"] in ("decline", "hangup") for m in box.msgs)
    await conf.close("hangup")
    assert done == [conf]


async def test_a_phone_added_after_the_close_is_declined_at_once() -> None:
    trunk, box = FakeTrunk(), Outbox()
    done: list[Conference] = []
    conf = shell(trunk, box, done)
    await conf.close("hangup")
    assert done == [conf] and conf.core.finished
    late = [c for c in conf.core.handle(PhoneInvite("late", "+8613800138000", "mum")) if isinstance(c, ToServer)]
    assert [c.msg["type"] for c in late] == ["decline"] and late[0].msg["q850_cause"] == 41
    assert trunk.legs == {}


@pytest.mark.parametrize("value", [0, 1])
async def test_closing_an_empty_conference_finishes_it(value: int) -> None:
    done: list[Conference] = []
    conf = conference(on_done=done.append)
    if value:
        conf.post(PhoneServer("nobody", {"type": "call_ended"}))    # a message for no leg: ignored
    await asyncio.wait_for(conf.close("shutdown"), 5)
    assert done == [conf] and conf.stats.frames == 0

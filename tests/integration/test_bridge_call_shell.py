"""The BridgeCall shell over real WebRTC on 127.0.0.1 with a FakeLeg for the SIP side: the core's
commands reach aiortc and the leg, audio crosses both ways (judged by frequency and level), and
the core's deadlines fire through the shell's one loop timer.

No SIP here (tests/integration/test_bridge.py has the real carrier); the "server" is a queue of
what the call sends.
"""

from __future__ import annotations

import asyncio
import contextlib
import math
from collections.abc import AsyncIterator
from typing import Any

import numpy as np
import pytest

from bridge.gateway.call import BridgeCall, CallSettings
from bridge.gateway.fakes import FakeLeg
from bridge.gateway.legs import FRAME_SAMPLES, LegRinging
from jego_call.media import analysis
from jego_call.media.endpoint import MediaEndpoint, enable_loopback_candidates
from jego_call.media.sinks import Analyser
from jego_call.media.tracks import ToneSource
from tests.helpers import until

CID = "shell-0001"
NUMBER = "+8613800138000"


@pytest.fixture(autouse=True)
def loopback() -> None:
    enable_loopback_candidates()


class Server:
    """What a BridgeCall sends, as the worker's `send` would carry it."""

    def __init__(self) -> None:
        self.q: asyncio.Queue[dict[str, Any]] = asyncio.Queue()
        self.all: list[dict[str, Any]] = []

    async def send(self, msg: dict[str, Any]) -> None:
        self.all.append(msg)
        self.q.put_nowait(msg)

    async def expect(self, type_: str, timeout: float = 10.0) -> dict[str, Any]:
        async with asyncio.timeout(timeout):
            while True:
                msg = await self.q.get()
                if msg["type"] == type_:
                    return msg


def tone_frames(freq: float, dbfs: float = -10.0) -> Any:
    """Endless 20 ms PCM16 frames of a sine at 8 kHz, phase-continuous."""
    amp = 32767 * 10 ** (dbfs / 20)
    n = 0
    while True:
        idx = np.arange(n * FRAME_SAMPLES, (n + 1) * FRAME_SAMPLES)
        yield np.round(amp * np.sin(2 * math.pi * freq * idx / 8000)).astype("<i2").tobytes()
        n += 1


async def phone_speaks(leg: FakeLeg, freq: float) -> None:
    """The phone side sends a tone on its own 20 ms clock (absolute, no drift)."""
    loop = asyncio.get_running_loop()
    t0 = loop.time()
    for n, pcm in enumerate(tone_frames(freq)):
        leg.feed_audio(pcm)
        await asyncio.sleep(max(0.0, t0 + (n + 1) * 0.02 - loop.time()))   # pacing: the phone's 20 ms clock


@pytest.fixture
async def parts() -> AsyncIterator[dict[str, Any]]:
    made: dict[str, Any] = {"eps": [], "tasks": [], "calls": []}
    yield made
    for t in made["tasks"]:
        t.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await t
    for call in made["calls"]:
        with contextlib.suppress(Exception):
            await asyncio.wait_for(call.shutdown(), 10)
    for ep in made["eps"]:
        await ep.close()


async def app_to_phone(parts: dict[str, Any], settings: CallSettings, leg: FakeLeg,
                       app_tone: float | None = 1000.0) -> tuple[BridgeCall, Server, MediaEndpoint, Analyser]:
    """The app offers, the bridge dials the fake leg; returns once the app has the early answer."""
    heard = Analyser(window_s=0.5)
    app = MediaEndpoint(source=ToneSource(app_tone) if app_tone else None, sinks=[heard], name="app")
    parts["eps"].append(app)
    server = Server()
    call = BridgeCall(CID, "out", leg, server.send, settings)
    parts["calls"].append(call)
    call.begin_outbound(NUMBER, await app.create_offer())
    ring = await server.expect("ringing")
    assert ring["sip_code"] == 183 and ring["sdp"].startswith("v=0")
    await app.set_answer(ring["sdp"])
    await app.wait_connected(10)
    return call, server, app, heard


async def test_outbound_call_both_ways_through_the_shell(parts: dict[str, Any]) -> None:
    leg = FakeLeg(CID, on_dial=[LegRinging(183, early_media=True)])
    call, server, _app, heard = await app_to_phone(parts, CallSettings(), leg)
    assert leg.dialled == NUMBER and [c[0] for c in leg.calls] == ["dial"]
    parts["tasks"].append(asyncio.ensure_future(phone_speaks(leg, 440.0)))
    # early media: the phone's ringback reaches the app before the answer
    await until(lambda: heard.received_s > 1.0 and abs(heard.dominant_hz - 440) < 5)
    assert heard.level_dbfs > -20
    leg.remote_answer("PCMA")
    acc = await server.expect("accept")
    assert "sdp" not in acc  # it went with the 183
    await until(lambda: leg.frames_sent > 60)  # > 1.2 s of the app's tone at the phone
    phone_side = np.frombuffer(b"".join(list(leg.sent_audio)[-40:]), dtype="<i2")
    assert abs(analysis.dominant_frequency(phone_side, 8000) - 1000) < 5
    assert analysis.level_dbfs(phone_side) > -20  # ~-13 dBFS RMS for a -10 dBFS peak tone
    call.post({"type": "dtmf", "call_id": CID, "digits": "12#"})
    await until(lambda: leg.dtmf_sent == "12#")
    leg.remote_dtmf("5")
    assert (await server.expect("dtmf"))["digits"] == "5"
    leg.remote_hangup(16)
    assert (await server.expect("hangup"))["q850_cause"] == 16
    report = await server.expect("call_report")
    await asyncio.wait_for(call.done.wait(), 10)
    assert report["codec"] == "opus/PCMA"
    assert report["phone"]["packets_sent"] == leg.frames_sent > 60
    assert report["phone"]["packets_received"] == leg.frames_read > 50
    assert report["app"]["packets_received"] > 50 and report["app"]["packets_sent"] > 50
    assert call.sm.ended and call.sm.end_event.value == "phone_end"  # type: ignore[union-attr]


async def test_app_cancel_reaches_the_leg_as_cancel(parts: dict[str, Any]) -> None:
    leg = FakeLeg(CID, on_dial=[LegRinging(183, early_media=True)], cancel_ends=False)
    call, server, _app, _heard = await app_to_phone(parts, CallSettings(leg_end_wait_s=30), leg)
    call.post({"type": "call_ended", "call_id": CID, "reason": "cancelled"})
    await until(lambda: ("hangup", (16,)) in leg.calls)
    assert leg.state == "cancelling" and not call.done.is_set()
    leg.answer_crossing_cancel()  # the 200 crossed our CANCEL: the shell must BYE it
    await until(lambda: leg.calls.count(("hangup", (16,))) == 2 and leg.ended)
    await asyncio.wait_for(call.done.wait(), 10)
    assert [m["type"] for m in server.all] == ["ringing", "call_report"]  # no accept, no hangup back


async def test_phone_silence_ends_the_call_on_the_core_deadline(parts: dict[str, Any]) -> None:
    """Media timeout through the shell: the app keeps talking, the phone says nothing."""
    leg = FakeLeg(CID, on_dial=[LegRinging(183, early_media=True)])
    call, server, _app, _heard = await app_to_phone(parts, CallSettings(media_timeout_s=1.0), leg)
    leg.remote_answer()
    await server.expect("accept")
    t0 = asyncio.get_running_loop().time()
    hangup = await server.expect("hangup", timeout=10)
    waited = asyncio.get_running_loop().time() - t0
    assert hangup["q850_cause"] == 41 and ("hangup", (41,)) in leg.calls
    assert 0.9 < waited < 5.0, waited
    await asyncio.wait_for(call.done.wait(), 10)
    assert leg.frames_sent > 20  # the app's audio did reach the phone side meanwhile


async def test_maximum_call_length_through_the_shell(parts: dict[str, Any]) -> None:
    leg = FakeLeg(CID, on_dial=[LegRinging(183, early_media=True)])
    call, server, _app, _heard = await app_to_phone(parts, CallSettings(max_call_s=1.5, media_timeout_s=30), leg)
    parts["tasks"].append(asyncio.ensure_future(phone_speaks(leg, 440.0)))
    leg.remote_answer()
    await server.expect("accept")
    hangup = await server.expect("hangup", timeout=10)
    assert hangup["q850_cause"] == 102 and ("hangup", (102,)) in leg.calls
    await asyncio.wait_for(call.done.wait(), 10)


async def test_inbound_call_answered_by_the_app(parts: dict[str, Any]) -> None:
    leg = FakeLeg(CID, inbound=True)
    server = Server()
    call = BridgeCall(CID, "in", leg, server.send, CallSettings())
    parts["calls"].append(call)
    heard = Analyser(window_s=0.5)
    app = MediaEndpoint(source=ToneSource(700.0), sinks=[heard], name="app")
    parts["eps"].append(app)
    call.begin_inbound("+8613900001111", "bob")
    inv = await server.expect("invite")
    assert (inv["to"], inv["from"], inv["media"]) == ("bob", "+8613900001111", ["audio"])
    answer = await app.accept_offer(inv["sdp"])
    call.post({"type": "ringing", "call_id": CID})
    call.post({"type": "accept", "call_id": CID, "sdp": answer})
    await until(lambda: ("answer", ()) in leg.calls)
    parts["tasks"].append(asyncio.ensure_future(phone_speaks(leg, 440.0)))
    await until(lambda: heard.received_s > 1.0 and abs(heard.dominant_hz - 440) < 5)
    await until(lambda: leg.frames_sent > 60)
    phone_side = np.frombuffer(b"".join(list(leg.sent_audio)[-40:]), dtype="<i2")
    assert abs(analysis.dominant_frequency(phone_side, 8000) - 700) < 5
    call.post({"type": "call_ended", "call_id": CID, "reason": "hangup"})
    await asyncio.wait_for(call.done.wait(), 10)
    assert ("hangup", (16,)) in leg.calls and not any(c[0] == "reject" for c in leg.calls)


async def test_inbound_call_refused_when_the_user_is_busy(parts: dict[str, Any]) -> None:
    leg = FakeLeg(CID, inbound=True)
    server = Server()
    call = BridgeCall(CID, "in", leg, server.send, CallSettings())
    call.begin_inbound("+8613900001111", "bob")
    await server.expect("invite")
    call.post({"type": "call_ended", "call_id": CID, "reason": "busy"})
    await asyncio.wait_for(call.done.wait(), 10)
    assert ("reject", (486, 17)) in leg.calls and leg.ended


async def test_shutdown_of_a_ringing_call(parts: dict[str, Any]) -> None:
    leg = FakeLeg(CID, on_dial=[LegRinging(183, early_media=True)])
    call, server, _app, _heard = await app_to_phone(parts, CallSettings(), leg)
    await asyncio.wait_for(call.shutdown(), 10)
    dec = await server.expect("decline")
    assert (dec["reason"], dec["q850_cause"]) == ("failed", 41)
    assert ("hangup", (41,)) in leg.calls and call.done.is_set()
    await asyncio.wait_for(call.shutdown(), 1)  # again: returns at once


async def test_audio_both_ways_keeps_a_call_past_the_media_timeout(parts: dict[str, Any]) -> None:
    """The shell tells the core when audio last came (at each timer tick): a call whose two sides
    talk lives on past several media timeouts, and ends one timeout after the phone goes quiet."""
    leg = FakeLeg(CID, on_dial=[LegRinging(183, early_media=True)])
    call, server, _app, _heard = await app_to_phone(parts, CallSettings(media_timeout_s=1.0), leg)
    talker = asyncio.ensure_future(phone_speaks(leg, 440.0))
    parts["tasks"].append(talker)
    leg.remote_answer()
    await server.expect("accept")
    await asyncio.sleep(3.5)  # three and a half media timeouts of two-way audio
    assert not call.sm.ended and "hangup" not in [m["type"] for m in server.all]
    talker.cancel()
    quiet = asyncio.get_running_loop().time()
    hangup = await server.expect("hangup", timeout=10)
    assert hangup["q850_cause"] == 41
    assert 0.8 < asyncio.get_running_loop().time() - quiet < 5.0
    await asyncio.wait_for(call.done.wait(), 10)

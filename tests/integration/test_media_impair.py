"""[media] impair on the shared RTP engine (bridge.net.media), checked at the datagram level on
real sockets: the loss rate over 10,000 packets, the delay, reordering under jitter, and a whole
carrier call with the impairment on (what the carrier records is still our tone, and its stats
count what the network dropped)."""

from __future__ import annotations

import asyncio
import socket
from pathlib import Path

import numpy as np
import pytest

from bridge.carrier.media import Echo, RtpStream, Tone, load_wav, measure_tone
from bridge.rtp.packet import RtpPacket
from bridge.sip.sdp import build_offer, negotiated_from_answer
from jego_call.media.impair import ImpairmentSpec
from tests.helpers import until

from .carrier_util import HOST, Uac, running_carrier, wait_records

pytestmark = pytest.mark.timeout(90)

SSRC = 0x5EED


async def impaired_stream(spec: str) -> RtpStream:
    s = await RtpStream.create(host=HOST, impair=ImpairmentSpec.parse(spec), jitter_capacity=64)
    return s


def packet(seq: int) -> bytes:
    return RtpPacket(0, seq & 0xFFFF, seq * 160, SSRC, b"\xff" * 160).serialize()


async def blast(dest: tuple[str, int], n: int, chunk: int = 100) -> None:
    """`n` RTP packets as fast as the receiver keeps up (yielding every `chunk` so the engine
    reads them: the kernel's socket buffer must not be the one dropping)."""
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        for i in range(n):
            sock.sendto(packet(i), dest)
            if i % chunk == chunk - 1:
                await asyncio.sleep(0.002)   # pacing: yield so the engine reads the socket


@pytest.mark.parametrize(("spec", "expected"), [("loss=10,seed=7", 0.10), ("loss=10,burst=3,seed=7", 0.10),
                                                ("loss=2,seed=11", 0.02)])
async def test_loss_rate_over_10000_packets_is_as_set(spec: str, expected: float) -> None:
    stream = await impaired_stream(spec)
    try:
        ep = stream._ep
        assert ep is not None and ep.impairment is not None
        net = ep.impairment
        await blast(stream.local_address, 10_000)
        await until(lambda: net.counters.received == 10_000 and net.held == 0, what="10,000 datagrams")
        c = net.counters
        assert abs(c.dropped / c.received - expected) <= 0.01
        # What was not dropped reached the session, and nothing else did.
        assert stream.session.n["received"] == c.delivered == c.received - c.dropped
        if "burst" in spec:
            assert c.dropped / c.loss_runs > 2.0  # runs of mean length 3, not single losses
        else:
            assert c.dropped / c.loss_runs < 1.3
    finally:
        await stream.close()


async def test_delay_holds_every_datagram_and_jitter_reorders() -> None:
    stream = await impaired_stream("delay=100,seed=1")
    loop = asyncio.get_running_loop()
    try:
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
            sent = loop.time()
            sock.sendto(packet(1), stream.local_address)
            await until(lambda: stream.session.n["received"] == 1, what="the delayed packet")
        got = stream.session.last_rx
        assert got is not None
        assert 0.099 <= got - sent < 0.3
    finally:
        await stream.close()

    stream = await impaired_stream("jitter=30,seed=3")  # 0..60 ms extra: later packets overtake
    try:
        net = stream._ep.impairment if stream._ep is not None else None
        assert net is not None
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
            for i in range(200):
                sock.sendto(packet(i), stream.local_address)
                await asyncio.sleep(0.005)   # pacing: 5 ms apart, so the jitter can reorder them
        await until(lambda: net.counters.delivered == 200, what="200 jittered datagrams")
        assert net.counters.dropped == 0
        assert net.counters.reordered > 20
        assert stream.session.n["received"] == 200
    finally:
        await stream.close()


async def test_inactive_spec_leaves_the_engine_path_alone() -> None:
    stream = await RtpStream.create(host=HOST, impair=ImpairmentSpec.parse(""))
    try:
        assert stream._ep is not None and stream._ep.impairment is None
        await blast(stream.local_address, 50)
        await until(lambda: stream.session.n["received"] == 50, what="50 datagrams")
    finally:
        await stream.close()


async def test_carrier_media_impair_drops_what_it_receives_and_the_tone_survives(tmp_path: Path) -> None:
    """[media] impair = "loss=20,seed=5" on the carrier: our 1 kHz tone to the echo number is
    still recorded as 1 kHz (losses concealed), and the carrier counts what its network dropped."""
    async with running_carrier(tmp_path / "data", media={"impair": "loss=20,seed=5"}) as carrier, \
            Uac(carrier.udp_port) as ua:
        stream = await RtpStream.create(host=HOST, record_path=tmp_path / "caller.wav")
        stream.play(Echo())
        offer = build_offer(HOST, stream.local_port, codecs=("PCMU",))
        resp, _, _, _ = await ua.authed("INVITE", ua.invite_uri("+8613800138000"),
                                        body=offer.serialize().encode())
        assert resp.status == 200 and ua.last_dialog is not None
        stream.configure(negotiated_from_answer(resp.body, offer))
        stream.start()
        await stream.play(Tone(1000.0, -10.0, 3.0))  # 3 s of tone, 150 packets
        key = ua.bye(ua.last_dialog)
        assert (await ua.response(key)).status == 200
        await stream.close()
        [rec] = await wait_records(carrier, 1)
        totals = dict(carrier.media_totals)

    received, dropped = totals["packets_received"], totals["impaired_dropped"]
    assert received > 100
    assert 0.12 < dropped / (received + dropped) < 0.28
    assert rec.recording is not None
    heard, _ = load_wav(rec.recording)
    loud = np.flatnonzero(np.abs(heard) > 3000)
    assert len(loud) > 8000
    f, _level = measure_tone(heard[loud[0] + 800: loud[0] + 8800])
    assert abs(f - 1000) < 5

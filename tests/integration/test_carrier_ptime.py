"""RtpStream receiving packets that are not 20 ms long (a=ptime:10/30, sipp's g711a.pcap is 30 ms):
a raw UDP peer sends a 1 kHz PCMU tone for 3 s; the recording and the echo it gets back must
hold all of it, judged by content (FFT frequency, RMS level, active duration)."""

from __future__ import annotations

import asyncio
import random
from pathlib import Path

import numpy as np
import pytest

from bridge.carrier.media import Echo, RtpStream, load_wav
from bridge.rtp import g711
from bridge.rtp.packet import RtpPacket
from jego_call.media.analysis import active_duration, dominant_frequency, level_dbfs
from tests.helpers import until

pytestmark = pytest.mark.timeout(60)

RATE = 8000
FRAME = 160
SECONDS = 3.0
TONE_HZ = 1000.0


class _Peer(asyncio.DatagramProtocol):
    """The far end: collects what the stream sends back (its echo)."""

    def __init__(self) -> None:
        self.packets: list[RtpPacket] = []

    def datagram_received(self, data: bytes, addr: object) -> None:
        self.packets.append(RtpPacket.parse(data))


def _tone(n: int) -> np.ndarray:
    t = np.arange(n) / RATE
    return np.rint(32767 * 10 ** (-10 / 20) * np.sin(2 * np.pi * TONE_HZ * t)).astype(np.int16)


def _active_span(x: np.ndarray, threshold_dbfs: float = -45.0, trim: int = 3) -> np.ndarray:
    """Samples from the first to the last 20 ms frame above ``threshold_dbfs``, minus ``trim`` frames
    at each end (onset/offset frames are partial)."""
    fr = x[: len(x) // FRAME * FRAME].reshape(-1, FRAME).astype(np.float64) / 32768.0
    on = np.nonzero(20 * np.log10(np.sqrt((fr**2).mean(axis=1)) + 1e-12) > threshold_dbfs)[0]
    if len(on) <= 2 * trim:
        return x[:0]
    return x[(on[0] + trim) * FRAME : (on[-1] + 1 - trim) * FRAME]


def _echo_pcm(packets: list[RtpPacket]) -> np.ndarray:
    """The echo as one signal: payloads in sequence order (the stream sends contiguous 20 ms frames)."""
    if not packets:
        return np.zeros(0, dtype=np.int16)
    base = packets[0].sequence_number
    ordered = sorted(packets, key=lambda p: (p.sequence_number - base) & 0xFFFF)
    return np.concatenate([g711.ulaw_decode(p.payload) for p in ordered])


def _judge(x: np.ndarray, sent_level: float, what: str) -> None:
    active = active_duration(x, RATE)
    assert active >= 0.95 * SECONDS, f"{what}: only {active:.2f} s of {SECONDS} s arrived"
    span = _active_span(x)
    freq = dominant_frequency(span, RATE)
    assert abs(freq - TONE_HZ) / TONE_HZ < 0.01, f"{what}: {freq:.1f} Hz"
    level = level_dbfs(span)
    assert abs(level - sent_level) < 1.0, f"{what}: {level:.2f} dBFS, sent {sent_level:.2f}"


@pytest.mark.parametrize("ptime_ms", [30, 10])
async def test_non_20ms_packets_arrive_whole_in_recording_and_echo(tmp_path: Path, ptime_ms: int) -> None:
    loop = asyncio.get_running_loop()
    peer = _Peer()
    transport, _ = await loop.create_datagram_endpoint(lambda: peer, local_addr=("127.0.0.1", 0))
    peer_addr = transport.get_extra_info("sockname")[:2]
    stream = await RtpStream.create(remote=peer_addr, record_path=tmp_path / "rx.wav")
    samples = RATE * ptime_ms // 1000
    count = round(SECONDS * 1000 / ptime_ms)
    pcm = _tone(samples * count)
    sent = g711.ulaw_decode(g711.ulaw_encode(pcm))  # what the stream can at best hear
    try:
        stream.play(Echo())
        stream.start()
        seq, ts, ssrc = random.getrandbits(16), random.getrandbits(32), random.getrandbits(32)
        t0 = loop.time() + 0.02
        for i in range(count):
            delay = t0 + i * ptime_ms / 1000 - loop.time()
            if delay > 0:
                await asyncio.sleep(delay)   # pacing: packets leave on the peer's own ptime clock
            payload = g711.ulaw_encode(pcm[i * samples : (i + 1) * samples])
            pkt = RtpPacket(0, (seq + i) & 0xFFFF, (ts + i * samples) & 0xFFFFFFFF, ssrc, payload, marker=i == 0)
            transport.sendto(pkt.serialize(), stream.local_address)
        # the jitter buffer and the FIFO drain: 25 more echo frames (0.5 s of the stream's clock)
        last = len(peer.packets)
        await until(lambda: len(peer.packets) >= last + 25, 5, "the echo past the tone's end")
    finally:
        await stream.close()
        transport.close()

    sent_level = level_dbfs(sent)
    recording, sr = load_wav(tmp_path / "rx.wav")
    assert sr == RATE
    _judge(recording, sent_level, f"recording ({ptime_ms} ms packets)")
    assert all(len(p.payload) == FRAME for p in peer.packets)  # we still send 20 ms packets
    _judge(_echo_pcm(peer.packets), sent_level, f"echo ({ptime_ms} ms packets)")

"""How long each frame waited in a receive buffer (issue 15's latency at the wire, virtual time):
JitterBuffer.last_arrival, RtpSession.last_hold, and the carrier's `.hold` file beside a
recording ([media] record_hold, bridge/carrier/media.py HoldRecorder), which
scripts/bench_soak.py subtracts from mouth to ear so the two simulated ends' adaptive buffers
are not counted as the bridge's latency.
"""

from __future__ import annotations

import asyncio
import math
import random
from pathlib import Path

import numpy as np

from bridge.carrier.media import HoldRecorder, RtpStream, read_holds
from bridge.rtp import g711
from bridge.rtp.media import FRAME, PERIOD, MediaFormat, RtpSession
from bridge.rtp.packet import RtpPacket
from bridge.rtp.session import JitterBuffer
from tests.integration.latency_util import hold_at

A = ("192.0.2.1", 4000)
PCM = g711.ulaw_encode(np.full(FRAME, 1000, dtype=np.int16))


def pkt(i: int) -> RtpPacket:
    return RtpPacket(0, 100 + i, 5000 + i * FRAME, 77, PCM)


def test_the_jitter_buffer_tells_when_the_packet_it_gave_arrived() -> None:
    jb = JitterBuffer(prefetch=1)
    for i in range(3):
        jb.push(pkt(i), 1.0 + 0.013 * i)
    got = []
    for k in range(3):
        assert jb.pop_packet(2.0 + k) is not None
        got.append(jb.last_arrival)
    assert got == [1.0, 1.013, 1.026]
    # a lost packet's slot (concealed) has no arrival; the next one has its own
    jb.push(pkt(4), 3.5)
    assert jb.pop_packet(4.0) is None and jb.last_arrival is None
    assert jb.pop_packet(4.02) is not None and jb.last_arrival == 3.5


def test_a_red_copy_has_no_arrival_of_its_own() -> None:
    jb = JitterBuffer(prefetch=1)
    jb.push(pkt(-1), 0.0)  # two in sequence: the source is valid (RFC 3550 A.1)
    jb.push(pkt(0), 0.0)
    assert jb.pop_packet(0.0) is not None and jb.pop_packet(0.02) is not None
    jb.push(pkt(2), 0.05)
    assert jb.push_redundant(pkt(1), 1)  # packet 1 lost, its copy rides in packet 2
    assert jb.pop_packet(0.06) is not None and jb.last_redundant and jb.last_arrival is None
    assert jb.pop_packet(0.08) is not None and jb.last_arrival == 0.05


def test_the_arrival_book_stays_bounded() -> None:
    jb = JitterBuffer(capacity=8, prefetch=1)
    for i in range(2000):  # pushed far ahead of a playout that never runs
        jb.push(pkt(i), i * PERIOD)
    assert len(jb._arrived) <= 2 * jb.capacity + 8


class Holds:
    """AudioPort: keeps the session's last_hold of each slot."""

    def __init__(self) -> None:
        self.session: RtpSession | None = None
        self.holds: list[float | None] = []

    def exchange(self, rx: np.ndarray, live: bool) -> np.ndarray:
        assert self.session is not None
        self.holds.append(self.session.last_hold)
        return np.zeros(FRAME, dtype=np.int16)


def test_the_session_measures_each_frames_hold_against_its_slot() -> None:
    port = Holds()
    s = RtpSession(MediaFormat("PCMU", 0, 101, remote=A), port, jitter_prefetch=1,
                   rng=random.Random(3))
    port.session = s
    s.start(0.0)
    # packet i arrives 7 ms after slot i's instant; from packet 20 on, 27 ms after (a frame
    # later: the buffer runs dry once and starts again)
    arrivals = []
    for i in range(40):
        due = s.next_due
        assert due is not None
        s.tick(due)
        arrivals.append(i * PERIOD + (0.007 if i < 20 else 0.027))
        s.receive(pkt(i).serialize(), A, arrivals[-1])
    played = [(k, h) for k, h in enumerate(port.holds) if h is not None]
    assert len(played) >= 35
    # each hold is the slot's instant less the arrival of a packet that came before it
    for k, h in played:
        assert 0 < h < 2 * PERIOD
        assert any(math.isclose(k * PERIOD - h, t, abs_tol=1e-9) for t in arrivals), (k, h)
    # one frame more is waited before the step (33 ms: probation held the first packet), the
    # arrival phase alone after it (13 ms): mouth to ear less the hold is the wire's 7 / 27 ms
    assert {round(h, 6) for _, h in played} == {0.033, 0.013}


def test_the_hold_file_beside_a_recording(tmp_path: Path) -> None:
    rec = HoldRecorder(tmp_path / "c.hold")
    for h in (0.0123, None, 0.02):
        rec.write(h)
    rec.close()
    got = read_holds(tmp_path / "c.hold")
    assert got.size == 3 and math.isclose(float(got[0]), 12.3, rel_tol=1e-6) and math.isnan(float(got[1]))
    # the slot of a sample, or the next one with a packet of its own
    assert hold_at(got, 5) == float(got[0]) and hold_at(got, FRAME + 3) == float(got[2])
    assert hold_at(got, 10 * FRAME) is None


def test_the_carrier_stream_writes_holds_only_when_asked(tmp_path: Path) -> None:
    async def run(record_hold: bool, name: str) -> Path:
        stream = await RtpStream.create(host="127.0.0.1", record_path=tmp_path / f"{name}.wav",
                                        record_hold=record_hold)
        await stream.close()
        return tmp_path / f"{name}.hold"

    assert asyncio.run(run(True, "on")).exists()
    assert not asyncio.run(run(False, "off")).exists()

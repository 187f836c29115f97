"""bridge/gateway/pyvoip/media.py, the SIP leg's RTP on the shared engine, without pyVoIP: the
media events it turns into leg calls and DTMF futures (a digit to the leg, flash only counted, a
sent digit resolves its future, a cancelled one fails it, unknown jobs ignored), the frame queues
at the seam (bounded, oldest dropped, counted), stop() (idempotent, closes the socket, fails
pending DTMF, also from another thread), update() keeping our sequence running, and the stats
keys; then two clients on 127.0.0.1 sockets carry a 1 kHz tone, judged by its frequency.
"""

from __future__ import annotations

import asyncio
import socket
import threading
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import cast

import numpy as np
import pytest

from bridge.gateway.legs import FRAME_BYTES
from bridge.gateway.pyvoip.common import TrunkConfig
from bridge.gateway.pyvoip.leg import PyVoipLeg
from bridge.gateway.pyvoip.media import _MediaClient, _on_loop_thread
from bridge.rtp.dtmf import DtmfEvent
from bridge.rtp.media import DtmfCancelled, DtmfReceived, DtmfSent, RemoteBye, RemoteStats, ReportReceived
from bridge.sip.sdp import NegotiatedAudio


@dataclass
class FakeLeg:
    """What _MediaClient asks of its PyVoipLeg: the call id (for the log) and digits heard."""
    call_id: str = "call-1"
    digits: list[str] = field(default_factory=list)

    def _dtmf_from_thread(self, digit: str) -> None:
        self.digits.append(digit)


def audio(port: int = 40000, *, codec: str = "PCMU", pt: int = 0, te: int | None = 101,
          direction: str = "sendrecv") -> NegotiatedAudio:
    return NegotiatedAudio(remote_host="127.0.0.1", remote_port=port, codec=codec, payload_type=pt,
                           clock_rate=8000, telephone_event_pt=te, ptime=20, direction=direction)  # type: ignore[arg-type]


@pytest.fixture
def udp() -> Iterator[socket.socket]:
    s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    s.bind(("127.0.0.1", 0))
    yield s
    s.close()


def client(sock: socket.socket, leg: FakeLeg | None = None, **cfg: object) -> _MediaClient:
    return _MediaClient(cast(PyVoipLeg, leg or FakeLeg()), sock, audio(), TrunkConfig(**cfg))  # type: ignore[arg-type]


def dtmf(event: int, name: str) -> DtmfReceived:
    return DtmfReceived(DtmfEvent(event=event, name=name, timestamp=0, ssrc=1, duration=800, volume=10))


# --- events -----------------------------------------------------------------------------------------------

def test_a_received_digit_goes_to_the_leg_and_flash_is_only_counted(udp: socket.socket) -> None:
    leg = FakeLeg()
    mc = client(udp, leg)
    mc._handle_events([dtmf(1, "1"), dtmf(11, "#"), dtmf(16, "flash"), dtmf(10, "*")])
    assert leg.digits == ["1", "#", "*"]
    assert mc.counters["rx_dtmf_other"] == 1 and mc.stats()["rx_dtmf_other"] == 1


async def test_a_sent_digit_resolves_its_future_and_a_cancelled_one_fails(udp: socket.socket) -> None:
    mc = client(udp)
    f1, f2, f3 = mc.queue_dtmf("12#")
    assert not (f1.done() or f2.done() or f3.done())
    jobs = list(mc._dtmf)
    assert len(jobs) == 3
    mc._handle_events([DtmfSent(jobs[0]), DtmfCancelled(jobs[1]), DtmfSent(999)])
    assert f1.result() is None
    with pytest.raises(ConnectionError, match="not sent"):
        f2.result()
    assert not f3.done() and list(mc._dtmf) == [jobs[2]]
    mc._handle_events([DtmfSent(jobs[0])])  # a repeat of a finished job changes nothing
    assert list(mc._dtmf) == [jobs[2]]
    mc.stop()
    with pytest.raises(ConnectionError, match="media stopped"):
        f3.result()


async def test_dtmf_without_telephone_event_or_with_a_bad_digit_queues_nothing(udp: socket.socket) -> None:
    mc = _MediaClient(cast(PyVoipLeg, FakeLeg()), udp, audio(te=None), TrunkConfig())
    with pytest.raises(ValueError, match="telephone-event"):
        mc.queue_dtmf("1")
    mc.update(audio())
    with pytest.raises(ValueError, match="not a DTMF digit: 'x'"):
        mc.queue_dtmf("1x")
    assert mc._dtmf == {}
    assert len(mc.queue_dtmf("1")) == 1


def test_rtcp_reports_and_bye_are_taken_quietly(udp: socket.socket) -> None:
    mc = client(udp)
    stats = RemoteStats(ssrc=5, fraction_lost=0.25, cumulative_lost=7, highest_seq=100, jitter=0.004, rtt=None, at=1.0)
    mc._handle_events([ReportReceived(stats), RemoteBye((5,), ""), RemoteBye((5,), "hang up")])
    assert mc.counters == {}


# --- the frame queues -------------------------------------------------------------------------------------

def test_writes_are_bounded_dropping_the_oldest(udp: socket.socket) -> None:
    mc = client(udp, tx_queue_frames=3)
    frames = [bytes([i]) * FRAME_BYTES for i in range(5)]
    for f in frames:
        mc.write(f)
    assert mc.tx_backlog == 3 and list(mc.queues.tx) == frames[2:]
    st = mc.stats()
    assert st["tx_dropped"] == 2 and st["tx_backlog"] == 3


def test_read_is_empty_bytes_until_something_arrived_then_in_order(udp: socket.socket) -> None:
    mc = client(udp, rx_queue_frames=2)
    assert mc.read() == b""
    pcm = [np.full(160, v, dtype=np.int16) for v in (1, 2, 3)]
    for p in pcm:
        mc.queues.exchange(p, live=True)
    assert mc.stats()["rx_dropped_frames"] == 1
    assert mc.read() == pcm[1].tobytes() and mc.read() == pcm[2].tobytes() and mc.read() == b""
    mc.queues.exchange(pcm[0], live=False)  # not live: nothing is queued
    assert mc.read() == b""


def test_stats_before_start_are_zero_and_name_every_counter(udp: socket.socket) -> None:
    st = client(udp).stats()
    for key in ("tx_packets", "tx_dtmf_packets", "tx_underruns", "tx_skipped_ticks", "tx_backlog", "tx_dropped",
                "tx_errors", "tx_socket_dropped", "rx_packets", "rx_dtmf_packets", "rx_malformed", "rx_dropped",
                "rx_errors", "rx_backlog", "rx_dropped_frames", "next_seq", "ticks", "rtcp_sent", "rtcp_received"):
        assert key in st, key
    assert st["tx_packets"] == st["rx_packets"] == st["ticks"] == 0
    assert "rtt_ms" not in st and "remote_loss" not in st


def test_the_first_sequence_number_is_the_configured_one_and_update_keeps_it(udp: socket.socket) -> None:
    mc = client(udp, rtp_initial_sequence=65000)
    assert mc.stats()["next_seq"] == 65000
    assert mc.codec == "PCMU" and mc.inPort == udp.getsockname()[1]
    mc.update(audio(codec="PCMA", pt=8))
    assert mc.codec == "PCMA" and mc.stats()["next_seq"] == 65000  # RFC 3550 §5.1: runs on


# --- stop --------------------------------------------------------------------------------------------------

def test_stop_before_start_closes_the_socket_and_is_idempotent() -> None:
    s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    s.bind(("127.0.0.1", 0))
    mc = client(s)
    mc.stop()
    assert s.fileno() == -1
    mc.stop()
    mc.start()  # a stopped client does not start again
    assert mc._ep is None


async def test_stop_from_another_thread_runs_on_the_loop() -> None:
    s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    s.bind(("127.0.0.1", 0))
    mc = client(s)
    mc.start()
    fut = mc.queue_dtmf("5")[0]
    ran_on: list[bool] = []
    real_close = mc._engine.close if mc._engine else None
    assert real_close is not None

    def close(ep: object) -> None:
        ran_on.append(_on_loop_thread(asyncio.get_running_loop()))
        real_close(ep)  # type: ignore[arg-type]

    mc._engine.close = close  # type: ignore[union-attr, method-assign]
    t = threading.Thread(target=mc.stop)
    t.start()
    await asyncio.wait([fut], timeout=3)  # the handed-over stop runs on this loop meanwhile
    t.join(3)
    assert ran_on == [True]
    assert isinstance(fut.exception(), ConnectionError)


async def test_on_loop_thread_tells_the_loop() -> None:
    loop = asyncio.get_running_loop()
    assert _on_loop_thread(loop)
    other = asyncio.new_event_loop()
    try:
        assert not _on_loop_thread(other)
    finally:
        other.close()
    seen: list[bool] = []
    t = threading.Thread(target=lambda: seen.append(_on_loop_thread(loop)))
    t.start()
    t.join()
    assert seen == [False]


# --- two clients on real sockets --------------------------------------------------------------------------

def tone(n: int, hz: float = 1000.0, level: float = 8000.0) -> list[bytes]:
    t = np.arange(n * 160) / 8000.0
    pcm = (level * np.sin(2 * np.pi * hz * t)).astype(np.int16)
    return [pcm[i * 160:(i + 1) * 160].tobytes() for i in range(n)]


async def test_a_tone_written_on_one_client_is_read_on_the_other() -> None:
    sa = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    sb = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    sa.bind(("127.0.0.1", 0))
    sb.bind(("127.0.0.1", 0))
    pa, pb = sa.getsockname()[1], sb.getsockname()[1]
    a = _MediaClient(cast(PyVoipLeg, FakeLeg("a")), sa, audio(pb), TrunkConfig(tx_queue_frames=60))
    b = _MediaClient(cast(PyVoipLeg, FakeLeg("b")), sb, audio(pa), TrunkConfig(rx_queue_frames=60))
    a.start()
    b.start()
    try:
        got: list[bytes] = []
        frames = tone(50)
        for f in frames[:40]:
            a.write(f)
        async with asyncio.timeout(5):
            while len(got) < 25:
                frame = b.read()
                if frame:
                    got.append(frame)
                else:
                    await asyncio.sleep(0.02)  # poll the queue at the engine's pace (nothing asserted on time)
                if a.tx_backlog < 10:
                    a.write(frames[40 + len(got) % 10])
        pcm = np.frombuffer(b"".join(got[-20:]), dtype=np.int16).astype(np.float64)
        spectrum = np.abs(np.fft.rfft(pcm * np.hanning(len(pcm))))
        peak_hz = np.argmax(spectrum) * 8000.0 / len(pcm)
        assert abs(peak_hz - 1000.0) < 20.0, peak_hz
        rms = float(np.sqrt(np.mean(pcm ** 2)))
        assert 4000 < rms < 7000, rms  # 8000 peak -> 5657 rms, G.711 keeps it within a few %
        assert a.stats()["tx_packets"] >= 25 and b.stats()["rx_packets"] >= 25
    finally:
        a.stop()
        b.stop()

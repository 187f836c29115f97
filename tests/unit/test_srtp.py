"""bridge.net.srtp.SrtpGuard (the lean WebRTC leg's SRTP, RFC 3711, through pylibsrtp): tampered
packets are dropped and counted, replays refused, and the rollover counter carries audio past
sequence number 65535 into a real RtpSession, judged by the tone that comes out."""

from __future__ import annotations

import os

import numpy as np
import pylibsrtp

from bridge.net.srtp import SrtpGuard
from bridge.rtp.media import MediaFormat, RtpSession
from bridge.rtp.packet import RtpPacket
from bridge.rtp.rtcp import ReceiverReport, build_compound
from jego_call.media import analysis

KEY = os.urandom(30)  # master key (16) + salt (14), AES128_CM_SHA1_80


def pair() -> tuple[SrtpGuard, SrtpGuard]:
    """Sender and receiver guards keyed alike (as DTLS-SRTP keys the two ends of one direction)."""
    tx = pylibsrtp.Session(pylibsrtp.Policy(key=KEY, ssrc_type=pylibsrtp.Policy.SSRC_ANY_OUTBOUND))
    rx = pylibsrtp.Session(pylibsrtp.Policy(key=KEY, ssrc_type=pylibsrtp.Policy.SSRC_ANY_INBOUND))
    back_tx = pylibsrtp.Session(pylibsrtp.Policy(key=KEY, ssrc_type=pylibsrtp.Policy.SSRC_ANY_OUTBOUND))
    back_rx = pylibsrtp.Session(pylibsrtp.Policy(key=KEY, ssrc_type=pylibsrtp.Policy.SSRC_ANY_INBOUND))
    return SrtpGuard(tx, back_rx), SrtpGuard(back_tx, rx)


def rtp(seq: int, ts: int = 0, payload: bytes = b"\xff" * 160) -> bytes:
    return RtpPacket(payload_type=0, sequence_number=seq, timestamp=ts, ssrc=0x1234ABCD, payload=payload).serialize()


def test_round_trip_and_tampering_is_dropped_and_counted() -> None:
    a, b = pair()
    plain = rtp(1)
    wire = a.protect(plain)
    assert wire != plain and len(wire) == len(plain) + 10  # 80-bit tag
    assert b.unprotect(wire) == plain
    bad = bytearray(a.protect(rtp(2)))
    bad[20] ^= 0x01  # one payload bit
    assert b.unprotect(bytes(bad)) is None
    bad_tag = bytearray(a.protect(rtp(3)))
    bad_tag[-1] ^= 0x80  # the tag itself
    assert b.unprotect(bytes(bad_tag)) is None
    assert b.n["auth_failed"] == 2 and b.n["unprotected"] == 1
    # the stream goes on after the bad ones
    assert b.unprotect(a.protect(rtp(4))) == rtp(4)
    assert b.unprotect(b"\x80") is None and b.n["malformed"] == 1


def test_replayed_packets_are_refused() -> None:
    a, b = pair()
    wires = [a.protect(rtp(seq)) for seq in range(100, 110)]
    for w in wires:
        assert b.unprotect(w) is not None
    assert b.unprotect(wires[5]) is None  # seen before
    assert b.unprotect(wires[9]) is None
    assert b.n["replayed"] == 2 and b.n["auth_failed"] == 0
    # far older than the replay window (64 by default)
    old = a.protect(rtp(1000))
    for seq in range(1001, 1200):
        b.unprotect(a.protect(rtp(seq)))
    assert b.unprotect(old) is None
    assert b.n["replayed"] == 3


def test_srtcp_is_told_apart_and_protected() -> None:
    a, b = pair()
    rr = build_compound([ReceiverReport(ssrc=0x1234ABCD)])
    wire = a.protect(rr)
    assert wire != rr
    assert b.unprotect(wire) == rr
    bad = bytearray(wire)
    bad[9] ^= 0x01
    assert b.unprotect(bytes(bad)) is None and b.n["auth_failed"] == 1


class Tone:
    """AudioPort: sends a 1 kHz tone, keeps what it receives."""

    def __init__(self) -> None:
        self.t = 0
        self.heard: list[np.ndarray] = []

    def exchange(self, rx: np.ndarray, live: bool) -> np.ndarray | None:
        if live:
            self.heard.append(rx.copy())
        n = np.arange(self.t, self.t + 160)
        self.t += 160
        return (np.sin(2 * np.pi * 1000 * n / 8000) * 0.316 * 32767).astype(np.int16)


def test_rollover_past_65535_keeps_audio_flowing() -> None:
    """RFC 3711 §3.3.1: the sender's ROC goes to 1 after 65535; the receiver's estimate follows,
    so every packet after the wrap still authenticates and plays out."""
    a, b = pair()
    fmt = MediaFormat(codec="PCMU", payload_type=0, telephone_event_pt=None, remote=("127.0.0.1", 9))
    src, dst = Tone(), Tone()
    tx = RtpSession(fmt, src, sequence_number=65535 - 100, ssrc=0x1234ABCD, rtcp=False)
    rx = RtpSession(fmt, dst, rtcp=False)
    now = 100.0
    tx.start(now)
    rx.start(now)
    seqs = []
    for _ in range(400):  # 8 s: the wrap after 101 packets
        tx.tick(now)
        for data, _addr, _via in tx.out:
            seqs.append(RtpPacket.parse(data).sequence_number)
            plain = b.unprotect(a.protect(data))
            assert plain is not None, f"seq {seqs[-1]} refused: {b.n}"
            rx.receive(plain, ("127.0.0.1", 9), now + 0.001)
        tx.out.clear()
        rx.tick(now + 0.002)
        rx.out.clear()
        now += 0.02
    assert 65535 in seqs and 0 in seqs and seqs[-1] > 200
    assert b.n["unprotected"] == len(seqs) and b.n["auth_failed"] == b.n["replayed"] == 0
    heard = np.concatenate(dst.heard[-200:])  # the last 4 s: all after the wrap
    assert len(heard) == 200 * 160
    x = analysis.to_float(heard)
    assert abs(analysis.dominant_frequency(x, 8000) - 1000) < 10
    assert abs(analysis.level_dbfs(x) - analysis.sine_rms_dbfs(-10.0)) < 1.0

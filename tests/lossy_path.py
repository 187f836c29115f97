"""One seeded, impaired RTP path in virtual time, for unit tests and scripts/bench_loss.py.

`run_path(speech, fmt, tx_codec, rx_codec, spec)` sends `speech` (int16 at 8 kHz) from one
`RtpSession` to another through `Impairment(spec)`, 20 ms a tick, and returns what the receiver
played out (int16) and the receiving session, for its counters; ``drop=`` (indices of the RTP
packets sent, from 0) loses exactly those packets instead of a seeded pattern (``spec`` may then
be ""; delay and jitter from ``spec`` still apply). `Player` is the AudioPort both ends use: it
plays its PCM (then silence) and keeps what it hears.
"""

from __future__ import annotations

from collections.abc import Collection

import numpy as np

from bridge.rtp.codec import AudioCodec as Codec
from bridge.rtp.media import MediaFormat, RtpSession
from jego_call.media.impair import Impairment, ImpairmentSpec

ADDR = ("127.0.0.1", 9)


class Player:
    """AudioPort: plays `pcm` (int16 at 8 kHz, then silence) and records every slot it hears."""

    def __init__(self, pcm: np.ndarray) -> None:
        self.pcm = pcm
        self.at = 0
        self.heard: list[np.ndarray] = []

    def exchange(self, rx: np.ndarray, live: bool) -> np.ndarray:
        self.heard.append(rx.copy())
        chunk = self.pcm[self.at:self.at + 160]
        self.at += 160
        return np.pad(chunk, (0, 160 - len(chunk))) if len(chunk) < 160 else chunk


def run_path(speech: np.ndarray, fmt: MediaFormat, tx_codec: Codec, rx_codec: Codec, spec: str, *,
             jitter_adaptive: bool = False, seq: int | None = None,
             jitter_prefetch: int = 3, drop: Collection[int] = (), jitter_speech: bool = False) -> tuple[np.ndarray, RtpSession, Impairment[bytes]]:
    """(heard int16, receiving session, the impairment with its counters); `seq`: the sender's first
    sequence number; `jitter_prefetch`: the receiver's floor (bridge.rtp.session.APP_LEG_FLOOR: the
    bridge's app leg); `drop`: packet indices lost on purpose (counted in `net.counters.dropped`); `jitter_speech`: the
    app leg's speech-aware playout (a start cover, drops in pauses)."""
    src, dst = Player(speech), Player(np.zeros(0, dtype=np.int16))
    tx = RtpSession(fmt, src, codec=tx_codec, rtcp=False, sequence_number=seq)
    rx = RtpSession(fmt, dst, codec=rx_codec, rtcp=False, jitter_adaptive=jitter_adaptive,
                    jitter_prefetch=jitter_prefetch, jitter_speech=jitter_speech)
    net: Impairment[bytes] = Impairment(ImpairmentSpec.parse(spec))
    now = 10.0
    tx.start(now)
    rx.start(now)
    sent = 0
    for _ in range(len(speech) // 160 + 50):
        tx.tick(now)
        for data, _a, _v in tx.out:
            if sent in drop:
                net.counters.dropped += 1
            else:
                net.push(data, now)
            sent += 1
        tx.out.clear()
        for data in net.pop_due(now + 0.001):
            rx.receive(data, ADDR, now + 0.001)
        rx.tick(now + 0.002)
        rx.out.clear()
        now += 0.02
    return np.concatenate(dst.heard), rx, net

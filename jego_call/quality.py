"""[pure] Call quality as a number people understand: the ITU-T G.107 E-model.

`estimate(legs)` takes what the media endpoints and the bridge already count for each leg
(codec, packets expected and lost, loss bursts, jitter, round-trip time, concealed frames) and
gives the transmission rating R and its MOS (G.107 Annex B), plus one plain word (good / fair /
poor) for the call screen. A bridged call has two legs (the app's Opus leg and the phone's G.711
leg): their equipment impairments add (G.107 §7.6, transcoding) and so do their delays.

Reference values (G.113 Appendix I, G.107 defaults): R = 93.2 for an unimpaired narrowband
connection; G.711 Ie = 0 with Bpl = 25.1 when the receiver conceals lost packets (PLC), 4.3
without; delay impairment Idd per G.107 §7.4 for one-way delay Ta above 100 ms (echo assumed
cancelled, so Idte/Idle keep their default contribution inside the 93.2). Opus has no G.113
entry: we use Ie = 0 at voice bitrates of 24 kb/s and more, and Bpl = 20 without in-band FEC
(its PLC) and 30 with FEC, a documented choice, not a standard.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any, Final

R_DEFAULT: Final = 93.2


@dataclass(frozen=True, slots=True)
class CodecImpairment:
    """Equipment impairment factor `ie` and packet-loss robustness `bpl` (G.107 §7.6)."""

    ie: float
    bpl: float


CODECS: Final[dict[str, CodecImpairment]] = {
    "pcmu": CodecImpairment(0.0, 25.1),       # G.711 + PLC (G.113 Appendix I)
    "pcma": CodecImpairment(0.0, 25.1),
    "g711-noplc": CodecImpairment(0.0, 4.3),
    "opus": CodecImpairment(0.0, 20.0),       # our choice: see module docstring
    "opus-fec": CodecImpairment(0.0, 30.0),
}


@dataclass(frozen=True, slots=True)
class LegCounters:
    """What one media leg measured. `expected`/`lost` are RTP packets (RFC 3550 A.3); `bursts`
    is how many runs of consecutive losses there were (0 when unknown: loss taken as random);
    `delay_ms` is the leg's one-way delay (RTT / 2 plus playout buffering when known)."""

    codec: str = "pcmu"
    expected: int = 0
    lost: int = 0
    bursts: int = 0
    delay_ms: float = 0.0
    jitter_ms: float = 0.0
    concealed: int = 0
    late: int = 0


@dataclass(frozen=True, slots=True)
class Quality:
    """The E-model's verdict: R (0..100), MOS (1..4.5) and one word for people."""

    r_factor: float
    mos: float
    word: str
    loss: float          # effective packet-loss share used (0..1)
    burst_ratio: float
    delay_ms: float

    def as_dict(self) -> dict[str, float | str]:
        return {"r_factor": round(self.r_factor, 1), "mos": round(self.mos, 2), "quality": self.word}


def mos_from_r(r: float) -> float:
    """G.107 Annex B: MOS_CQE from R."""
    if r <= 0:
        return 1.0
    if r >= 100:
        return 4.5
    return 1.0 + 0.035 * r + r * (r - 60.0) * (100.0 - r) * 7e-6


def word_for(r: float) -> str:
    """good (R >= 80, "satisfied"), fair (70..80), poor (below 70) — G.107 Annex B's bands."""
    if r >= 80.0:
        return "good"
    if r >= 70.0:
        return "fair"
    return "poor"


def delay_impairment(ta_ms: float) -> float:
    """Idd of G.107 §7.4 for an absolute one-way delay `ta_ms` (0 up to 100 ms)."""
    if ta_ms <= 100.0:
        return 0.0
    x = math.log10(ta_ms / 100.0) / math.log10(2.0)
    sixth = 1.0 / 6.0
    return 25.0 * (math.pow(1.0 + x**6, sixth) - 3.0 * math.pow(1.0 + (x / 3.0) ** 6, sixth) + 2.0)


def burst_ratio(loss: float, bursts: int, lost: int) -> float:
    """BurstR of G.107 §7.6: the observed mean burst length over the one random loss at the same
    rate would give (1 / (1 - loss)). 1.0 when nothing is known or nothing was lost."""
    if lost <= 0 or bursts <= 0 or loss <= 0.0 or loss >= 1.0:
        return 1.0
    observed = lost / bursts
    return max(1.0, observed * (1.0 - loss))


def effective_ie(codec: CodecImpairment, loss: float, burst_r: float) -> float:
    """Ie,eff = Ie + (95 - Ie) * Ppl / (Ppl / BurstR + Bpl), Ppl in percent (G.107 eq. 7-29)."""
    ppl = 100.0 * max(0.0, min(1.0, loss))
    if ppl == 0.0:
        return codec.ie
    return codec.ie + (95.0 - codec.ie) * ppl / (ppl / burst_r + codec.bpl)


def _codec(name: str) -> CodecImpairment:
    key = name.lower().split("/")[0]
    return CODECS.get(key, CODECS["pcmu"])


def estimate(legs: Iterable[LegCounters]) -> Quality:
    """The whole call's quality from its legs (one leg for an app-to-app audio path, two for a
    bridged call). Impairments add; delays add."""
    r = R_DEFAULT
    total_delay = 0.0
    worst_loss, worst_burst = 0.0, 1.0
    any_leg = False
    for leg in legs:
        any_leg = True
        expected = max(leg.expected, leg.lost, 0)
        lost = max(0, leg.lost) + max(0, leg.late)
        loss = min(1.0, lost / expected) if expected else 0.0
        br = burst_ratio(loss, leg.bursts, lost)
        r -= effective_ie(_codec(leg.codec), loss, br)
        total_delay += max(0.0, leg.delay_ms)
        if loss > worst_loss:
            worst_loss, worst_burst = loss, br
    if not any_leg:
        raise ValueError("estimate() needs at least one leg")
    r -= delay_impairment(total_delay)
    r = max(0.0, min(100.0, r))
    return Quality(r, mos_from_r(r), word_for(r), worst_loss, worst_burst, total_delay)


# --- from what the endpoints count -----------------------------------------------------------
# One-way delay when nothing better is known: 20 ms packetisation plus a playout buffer of twice
# the interarrival jitter, at least 20 ms (G.107's Ta is mouth to ear; below 100 ms it costs nothing).
PACKET_MS: Final = 20.0
MIN_PLAYOUT_MS: Final = 20.0


def one_way_delay(rtt_ms: float | None, jitter_ms: float | None = None, playout_ms: float | None = None) -> float:
    """Ta estimate: half the round trip, packetisation, and the playout buffer (`playout_ms` when
    the receiver says, e.g. a browser's jitterBufferDelay; else 2 x jitter, at least 20 ms)."""
    net = max(0.0, float(rtt_ms)) / 2.0 if rtt_ms is not None else 0.0
    buf = float(playout_ms) if playout_ms is not None else max(MIN_PLAYOUT_MS, 2.0 * float(jitter_ms or 0.0))
    return net + PACKET_MS + max(0.0, buf)


def _num(stats: Mapping[str, Any], key: str) -> float | None:
    v = stats.get(key)
    return float(v) if isinstance(v, int | float) and not isinstance(v, bool) else None


def _int(stats: Mapping[str, Any], key: str) -> int:
    v = stats.get(key)
    return max(0, int(v)) if isinstance(v, int | float) and not isinstance(v, bool) else 0


def webrtc_receive(stats: Mapping[str, Any], codec: str | None = None) -> LegCounters:
    """What a WebRTC leg heard, from counters shaped like `MediaEndpoint.stats()` (aiortc) or the
    web app's `call_stats`: `packets_received`, `packets_lost`, `jitter_ms`, `rtt_ms`, optionally
    `jitter_buffer_ms`, `concealed`, `late`."""
    received, lost = _int(stats, "packets_received"), _int(stats, "packets_lost")
    jitter = _num(stats, "jitter_ms") or 0.0
    return LegCounters(
        codec=str(codec or stats.get("codec") or "opus"), expected=received + lost, lost=lost,
        delay_ms=one_way_delay(_num(stats, "rtt_ms"), jitter, _num(stats, "jitter_buffer_ms")),
        jitter_ms=jitter, concealed=_int(stats, "concealed"), late=_int(stats, "late"))


def webrtc_send(stats: Mapping[str, Any], codec: str | None = None) -> LegCounters | None:
    """What the far end of a WebRTC leg heard of ours, from its RTCP receiver reports
    (`remote_packets_lost` against our `packets_sent`); None before any report came."""
    remote_lost = stats.get("remote_packets_lost")
    if not isinstance(remote_lost, int) or isinstance(remote_lost, bool):
        return None
    sent = _int(stats, "packets_sent")
    return LegCounters(codec=str(codec or stats.get("codec") or "opus"), expected=max(sent, remote_lost),
                       lost=max(0, remote_lost), delay_ms=one_way_delay(_num(stats, "rtt_ms")))


def rtp_receive(stats: Mapping[str, Any], codec: str = "pcmu") -> LegCounters:
    """What an RTP leg of ours (bridge/rtp RtpSession: `_MediaClient.stats()`) heard: the jitter
    buffer's A.3 `expected`/`lost`, packets too `late` for their slot, `concealed` frames, jitter."""
    js = stats.get("jitter")

    def get(key: str) -> Any:  # a JitterStats, or the same as a dict (after JSON)
        return (js or {}).get(key, 0) if js is None or isinstance(js, Mapping) else getattr(js, key, 0)

    expected, lost, late = int(get("expected") or 0), max(0, int(get("lost") or 0)), int(get("late") or 0)
    jitter_ms = 1000.0 * float(get("jitter") or 0.0)
    rtt = _num(stats, "rtt_ms")
    return LegCounters(codec=codec, expected=max(expected, lost), lost=lost, late=late,
                       concealed=int(get("concealed") or 0), jitter_ms=jitter_ms,
                       delay_ms=one_way_delay(rtt, jitter_ms))


def rtp_send(stats: Mapping[str, Any], codec: str = "pcmu") -> LegCounters | None:
    """What the far end of an RTP leg heard of ours, from its RTCP reports (RFC 3550 §6.4.1):
    `remote_loss` of our `tx_packets`, its `jitter_ms`, the `rtt_ms`; None without a report."""
    remote_loss = stats.get("remote_loss")
    if not isinstance(remote_loss, int) or isinstance(remote_loss, bool):
        return None
    sent = _int(stats, "tx_packets")
    jitter = _num(stats, "jitter_ms") or 0.0
    return LegCounters(codec=codec, expected=max(sent, remote_loss), lost=max(0, remote_loss),
                       jitter_ms=jitter, delay_ms=one_way_delay(_num(stats, "rtt_ms"), jitter))


def worst(*qualities: Quality | None) -> Quality | None:
    """The lower of several estimates (the direction that sounded worse), ignoring None."""
    known = [q for q in qualities if q is not None]
    return min(known, key=lambda q: q.r_factor) if known else None


def bridged(app_rx: LegCounters | None, app_tx: LegCounters | None, phone_rx: LegCounters | None,
            phone_tx: LegCounters | None) -> dict[str, Quality]:
    """A bridged call both ways: what the app user heard (`to_app`: the phone leg's receive side,
    then our send side of the app leg) and what the phone heard (`to_phone`: the app leg's
    receive side, then our send side of the phone leg). A direction is left out when neither of
    its legs was measured; a leg without reports counts as clean."""
    out: dict[str, Quality] = {}
    for name, legs in (("to_app", (phone_rx, app_tx)), ("to_phone", (app_rx, phone_tx))):
        known = [leg for leg in legs if leg is not None]
        if known:
            out[name] = estimate(known)
    return out

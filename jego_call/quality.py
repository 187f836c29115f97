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
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Final

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

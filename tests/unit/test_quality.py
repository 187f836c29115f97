"""jego_call.quality: the G.107 E-model against its reference points."""

from __future__ import annotations

import pytest

from jego_call.quality import (
    CODECS,
    LegCounters,
    burst_ratio,
    delay_impairment,
    effective_ie,
    estimate,
    mos_from_r,
    word_for,
)


def test_unimpaired_g711_is_the_g107_default() -> None:
    q = estimate([LegCounters("PCMU", expected=5000, lost=0)])
    assert q.r_factor == pytest.approx(93.2)
    assert q.mos == pytest.approx(4.41, abs=0.01) and q.mos >= 4.1
    assert q.word == "good"


def test_mos_mapping_reference_points() -> None:
    assert mos_from_r(-5) == 1.0 and mos_from_r(120) == 4.5
    assert mos_from_r(50) == pytest.approx(1 + 0.035 * 50 + 50 * -10 * 50 * 7e-6)
    assert mos_from_r(80) == pytest.approx(4.02, abs=0.01)
    assert [word_for(r) for r in (93, 80, 75, 70, 50)] == ["good", "good", "fair", "fair", "poor"]


def test_loss_lowers_quality_monotonically() -> None:
    moses = [estimate([LegCounters("pcmu", 10_000, int(10_000 * p))]).mos for p in (0, 0.01, 0.03, 0.1, 0.2)]
    assert moses == sorted(moses, reverse=True) and moses[0] > moses[-1]
    # G.711 with PLC at 1 % random loss: Ie,eff = 95 * 1 / (1 + 25.1) = 3.64
    assert effective_ie(CODECS["pcmu"], 0.01, 1.0) == pytest.approx(3.64, abs=0.01)


def test_bursty_loss_is_worse_than_random_at_the_same_rate() -> None:
    random = estimate([LegCounters("pcmu", 10_000, 500, bursts=0)])
    bursty = estimate([LegCounters("pcmu", 10_000, 500, bursts=125)])  # mean burst of 4
    assert bursty.burst_ratio == pytest.approx(4 * 0.95)
    assert bursty.mos < random.mos
    assert burst_ratio(0.05, bursts=500, lost=500) == 1.0  # isolated losses: random


def test_delay_impairment_g107() -> None:
    assert delay_impairment(80) == 0.0 and delay_impairment(100) == 0.0
    assert delay_impairment(200) == pytest.approx(3.04, abs=0.01)  # X = 1
    assert delay_impairment(400) == pytest.approx(24.07, abs=0.01)  # X = 2
    assert delay_impairment(400) > delay_impairment(300) > delay_impairment(150) > 0


def test_bridged_call_adds_both_legs() -> None:
    app = LegCounters("opus", 10_000, 300, delay_ms=60)
    phone = LegCounters("pcmu", 10_000, 100, delay_ms=80)
    both = estimate([app, phone])
    assert both.r_factor < min(estimate([app]).r_factor, estimate([phone]).r_factor)
    assert both.delay_ms == 140


def test_no_leg_is_an_error() -> None:
    with pytest.raises(ValueError, match="at least one leg"):
        estimate([])

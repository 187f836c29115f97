"""jego_call.media.impair: each impairment mode checked at the datagram level, with a seed."""

from __future__ import annotations

import statistics

import pytest

from jego_call.errors import ConfigError
from jego_call.media.impair import Impairment, ImpairmentSpec

N = 10_000
PERIOD = 0.020


def run(spec: str, n: int = N) -> tuple[Impairment[int], list[tuple[int, float]]]:
    """Push n datagrams 20 ms apart; return the model and (seq, delivery time - send time)."""
    net: Impairment[int] = Impairment(ImpairmentSpec.parse(spec))
    sent: dict[int, float] = {}
    out: list[tuple[int, float]] = []
    t = 0.0
    for i in range(n):
        t = i * PERIOD
        for seq in net.pop_due(t):
            out.append((seq, t - sent[seq]))
        sent[i] = t
        net.push(i, t)
    while net.next_deadline() is not None:
        t = max(t, net.next_deadline() or t)
        for seq in net.pop_due(t):
            out.append((seq, t - sent[seq]))
    return net, out


def runs_of_losses(delivered: set[int], n: int) -> list[int]:
    runs, cur = [], 0
    for i in range(n):
        if i in delivered:
            if cur:
                runs.append(cur)
            cur = 0
        else:
            cur += 1
    if cur:
        runs.append(cur)
    return runs


@pytest.mark.parametrize("loss", [1.0, 5.0, 10.0])
def test_random_loss_rate(loss: float) -> None:
    net, out = run(f"loss={loss},seed=7")
    measured = 100 * (1 - len(out) / N)
    assert abs(measured - loss) <= 1.0, measured
    assert net.counters.dropped == N - len(out) and net.counters.received == N
    assert [s for s, _ in out] == sorted(s for s, _ in out)  # no delay: order kept


@pytest.mark.parametrize(("loss", "burst"), [(5.0, 2.0), (10.0, 3.0)])
def test_bursty_loss_rate_and_run_length(loss: float, burst: float) -> None:
    _net, out = run(f"loss={loss},burst={burst},seed=3")
    measured = 100 * (1 - len(out) / N)
    assert abs(measured - loss) <= 1.0, measured
    runs = runs_of_losses({s for s, _ in out}, N)
    assert statistics.mean(runs) == pytest.approx(burst, rel=0.2)
    random_runs = runs_of_losses({s for s, _ in run(f"loss={loss},seed=3")[1]}, N)
    assert statistics.mean(runs) > 1.5 * statistics.mean(random_runs)


def test_constant_delay_keeps_order() -> None:
    _net, out = run("delay=100,seed=1", n=500)
    assert len(out) == 500
    assert all(0.100 - 1e-9 <= d <= 0.100 + PERIOD + 1e-9 for _, d in out)  # observed on the 20 ms grid
    assert [s for s, _ in out] == list(range(500))


def test_jitter_adds_its_mean_and_reorders() -> None:
    net, out = run("delay=50,jitter=30,seed=2", n=2000)
    delays = [d for _, d in out]
    # delivery is observed on the 20 ms grid of the pushes: allow half a period of rounding
    assert statistics.mean(delays) == pytest.approx(0.050 + 0.030, abs=PERIOD / 2 + 0.003)
    assert min(delays) >= 0.050 - 1e-9 and max(delays) <= 0.050 + 0.060 + PERIOD
    assert net.counters.reordered > 0
    seqs = [s for s, _ in out]
    assert seqs != sorted(seqs) and sorted(seqs) == list(range(2000))


def test_small_jitter_does_not_reorder() -> None:
    net, out = run("jitter=5,seed=2", n=1000)
    assert net.counters.reordered == 0 and [s for s, _ in out] == list(range(1000))


def test_seed_repeats_the_pattern() -> None:
    a = [s for s, _ in run("loss=10,burst=2,jitter=20,seed=11", 2000)[1]]
    b = [s for s, _ in run("loss=10,burst=2,jitter=20,seed=11", 2000)[1]]
    c = [s for s, _ in run("loss=10,burst=2,jitter=20,seed=12", 2000)[1]]
    assert a == b and a != c


@pytest.mark.parametrize("bad", ["loss=100", "loss=-1", "burst=0.5", "delay=-5", "nope=1", "loss", "loss=x"])
def test_bad_specs_name_the_key(bad: str) -> None:
    with pytest.raises(ConfigError) as err:
        ImpairmentSpec.parse(bad)
    assert "impair" in str(err.value)


def test_spec_round_trip() -> None:
    spec = ImpairmentSpec.parse("loss=5,burst=2,jitter=30,delay=100,seed=1")
    assert (spec.loss, spec.burst, spec.jitter, spec.delay, spec.seed) == (5, 2, 30, 100, 1)
    assert ImpairmentSpec.parse(str(spec)) == spec and spec.active
    assert not ImpairmentSpec.parse("").active and str(ImpairmentSpec()) == "none"

"""jego_call.client.Backoff and JegoClient.reconnect's waiting: jittered, exponential, bounded
(seeded RNG, injected sleep; the server is a closed 127.0.0.1 port)."""

from __future__ import annotations

import asyncio
import random

import pytest

from jego_call.client import Backoff, JegoClient, ServerUnreachable
from tests.servers import free_port


def test_delays_grow_exponentially_within_their_ceiling_and_stop_at_the_cap() -> None:
    b = Backoff(random.Random(3), base_s=0.5, cap_s=8.0)
    ceilings, delays = [], []
    for _ in range(12):
        ceilings.append(b.ceiling())
        delays.append(b.next_delay())
    assert ceilings == [0.5, 1.0, 2.0, 4.0, 8.0, 8.0, 8.0, 8.0, 8.0, 8.0, 8.0, 8.0]
    assert all(0.0 <= d <= c for d, c in zip(delays, ceilings, strict=True))
    assert max(delays) <= 8.0 and max(delays[4:]) > 4.0   # reaches past the uncapped part, never the cap
    b.reset()
    assert b.ceiling() == 0.5 and b.attempt == 0


def test_delays_are_jittered_and_seeded() -> None:
    same = [Backoff(random.Random(11)).next_delay() for _ in range(2)]
    assert same[0] == same[1]                              # seeded: reproducible
    firsts = [Backoff(random.Random(seed)).next_delay() for seed in range(200)]
    assert len(set(firsts)) == 200                         # 200 clients do not come back in one instant
    assert min(firsts) < 0.1 and max(firsts) > 0.9         # spread over the whole first window [0, 1 s]
    many = [Backoff(random.Random(seed), cap_s=10.0) for seed in range(200)]
    for b in many:
        for _ in range(6):
            b.next_delay()
    sixth = [b.next_delay() for b in many]
    assert all(0 <= d <= 10.0 for d in sixth) and max(sixth) - min(sixth) > 5.0


def test_a_huge_attempt_count_stays_bounded() -> None:
    b = Backoff(random.Random(1), base_s=1.0, cap_s=30.0)
    b.attempt = 10_000
    assert b.ceiling() == 30.0 and 0 <= b.next_delay() <= 30.0


@pytest.mark.parametrize(("base", "cap"), [(0.0, 1.0), (2.0, 1.0), (-1.0, 5.0)])
def test_bad_bounds_are_refused(base: float, cap: float) -> None:
    with pytest.raises(ValueError, match="base_s"):
        Backoff(base_s=base, cap_s=cap)


def test_reconnect_waits_the_backoff_delays_then_gives_up() -> None:
    waited: list[float] = []

    async def sleep(d: float) -> None:  # virtual time: record, do not wait
        waited.append(d)

    async def run() -> None:
        async with JegoClient(f"http://127.0.0.1:{free_port()}", timeout=2.0) as c:  # nothing listens
            c.token = "x.y"
            with pytest.raises(ServerUnreachable, match="after 5 attempts"):
                await c.reconnect(Backoff(random.Random(5), base_s=1.0, cap_s=4.0), max_attempts=5, sleep=sleep)

    asyncio.run(run())
    want = Backoff(random.Random(5), base_s=1.0, cap_s=4.0)
    assert waited == [want.next_delay() for _ in range(5)]  # exactly the seeded sequence, one per attempt
    assert all(0 <= d <= c for d, c in zip(waited, [1.0, 2.0, 4.0, 4.0, 4.0], strict=True))

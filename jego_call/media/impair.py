"""[pure] A network on the receive path: seeded loss (random or Gilbert–Elliott bursts), delay and
jitter with reordering, for reproducing what a user abroad hears (this kernel has no netem).

    spec = ImpairmentSpec.parse("loss=5,burst=2,jitter=30,delay=100,seed=1")
    net = Impairment(spec)
    net.push(datagram, now)            # every datagram as it arrives (below ICE/DTLS/SRTP)
    for d in net.pop_due(now): ...     # what the "network" delivers by `now`
    net.next_deadline()                # when to call pop_due next (None: nothing held)

Loss: `loss` percent of datagrams. Without `burst` each datagram is lost independently
(Bernoulli); with `burst=B` losses come in runs of mean length B from a two-state Gilbert model
(good -> bad with p, bad -> good with q = 1/B, every datagram in the bad state lost), tuned so
the long-run loss is still `loss` (p = loss·q / (1 - loss)). Delay: every datagram waits `delay`
ms plus a uniform extra delay in [0, 2·jitter] ms, so its mean added delay is delay + jitter and,
once 2·jitter exceeds the packet interval, later datagrams overtake earlier ones (reordering).
`seed` makes the pattern repeatable. The shells (jego dial's ICE transport, the bridge's app
leg, the carrier's media) call this; `counters` says what it did.
"""

from __future__ import annotations

import heapq
import random
from dataclasses import dataclass, field
from typing import Generic, TypeVar

from ..errors import ConfigError

T = TypeVar("T")

_KEYS = ("loss", "burst", "delay", "jitter", "seed")


@dataclass(frozen=True, slots=True)
class ImpairmentSpec:
    """What to do to received datagrams. Percent and milliseconds, as `--impair` writes them."""

    loss: float = 0.0      # percent, 0..100
    burst: float = 0.0     # mean loss-run length in datagrams (0 or 1: independent losses)
    delay: float = 0.0     # ms added to every datagram
    jitter: float = 0.0    # ms: extra uniform delay in [0, 2·jitter]
    seed: int | None = None

    def __post_init__(self) -> None:
        if not 0.0 <= self.loss < 100.0:
            raise ConfigError("impair.loss", f"must be a percentage in [0, 100), got {self.loss}")
        if self.burst < 0 or (0 < self.burst < 1):
            raise ConfigError("impair.burst", f"must be 0 or a mean run length >= 1, got {self.burst}")
        if self.delay < 0 or self.jitter < 0:
            raise ConfigError("impair.delay", "delay and jitter must not be negative")

    @property
    def active(self) -> bool:
        return self.loss > 0 or self.delay > 0 or self.jitter > 0

    @classmethod
    def parse(cls, text: str) -> ImpairmentSpec:
        """`loss=5,burst=2,jitter=30,delay=100,seed=1` (any subset, any order; "" = none)."""
        values: dict[str, float | int | None] = {}
        for part in filter(None, (p.strip() for p in text.split(","))):
            key, sep, raw = part.partition("=")
            key = key.strip().lower()
            if not sep or key not in _KEYS:
                raise ConfigError("impair", f"expected key=value with a key of {', '.join(_KEYS)}, got {part!r}")
            try:
                values[key] = int(raw) if key == "seed" else float(raw)
            except ValueError:
                raise ConfigError(f"impair.{key}", f"not a number: {raw!r}") from None
        return cls(**values)  # type: ignore[arg-type]

    def __str__(self) -> str:
        parts = [f"{k}={getattr(self, k):g}" for k in ("loss", "burst", "delay", "jitter") if getattr(self, k)]
        if self.seed is not None:
            parts.append(f"seed={self.seed}")
        return ",".join(parts) or "none"


@dataclass(slots=True)
class ImpairmentCounters:
    received: int = 0
    dropped: int = 0
    delivered: int = 0
    reordered: int = 0      # delivered before a datagram that arrived earlier
    loss_runs: int = 0      # runs of consecutive drops


@dataclass(order=True, slots=True)
class _Held(Generic[T]):
    due: float
    order: int
    item: T = field(compare=False)


class Impairment(Generic[T]):
    """The seeded network model; `T` is whatever the shell passes (a datagram, a tuple ...)."""

    def __init__(self, spec: ImpairmentSpec, rng: random.Random | None = None) -> None:
        self.spec = spec
        self.rng = rng or random.Random(spec.seed)
        self.counters = ImpairmentCounters()
        loss = spec.loss / 100.0
        if spec.burst > 1 and loss > 0:
            self._q = 1.0 / spec.burst
            self._p = loss * self._q / (1.0 - loss)
        else:
            self._q = 0.0
            self._p = loss
        self._bad = False
        self._last_dropped = False
        self._held: list[_Held[T]] = []
        self._seq = 0
        self._delivered_up_to = -1

    def _lose(self) -> bool:
        if self._q == 0.0:  # independent losses
            return self.rng.random() < self._p
        if self._bad:
            self._bad = self.rng.random() >= self._q
        else:
            self._bad = self.rng.random() < self._p
        return self._bad

    def push(self, item: T, now: float) -> None:
        """A datagram arrived at `now` (seconds): drop it, or hold it until its delivery time."""
        c = self.counters
        c.received += 1
        if self.spec.loss > 0 and self._lose():
            c.dropped += 1
            if not self._last_dropped:
                c.loss_runs += 1
            self._last_dropped = True
            return
        self._last_dropped = False
        extra = self.rng.uniform(0.0, 2.0 * self.spec.jitter) if self.spec.jitter else 0.0
        due = now + (self.spec.delay + extra) / 1000.0
        heapq.heappush(self._held, _Held(due, self._seq, item))
        self._seq += 1

    def pop_due(self, now: float) -> list[T]:
        """Everything whose delivery time has come, in delivery order."""
        out: list[T] = []
        while self._held and self._held[0].due <= now:
            held = heapq.heappop(self._held)
            if held.order < self._delivered_up_to:
                self.counters.reordered += 1
            self._delivered_up_to = max(self._delivered_up_to, held.order)
            out.append(held.item)
        self.counters.delivered += len(out)
        return out

    def next_deadline(self) -> float | None:
        return self._held[0].due if self._held else None

    @property
    def held(self) -> int:
        return len(self._held)

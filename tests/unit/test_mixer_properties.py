"""Property tests for the N-1 mixer (bridge/rtp/mixer.py): for any room, each participant hears
exactly the sum of the other talkers (while it stays under the ceiling), never themselves, the
silent and muted share one mix, and nothing ever exceeds the limiter's ceiling or wraps.
"""

from __future__ import annotations

import numpy as np
from hypothesis import given, settings
from hypothesis import strategies as st

from bridge.rtp.mixer import Mixer, Pcm, dbfs_to_amplitude

N = 160
PEOPLE = ["mum", "lili", "wei", "+8613800138000", "bob"]


def tone(freq: int, amp: int) -> Pcm:
    pcm: Pcm = np.rint(amp * np.sin(2 * np.pi * freq * np.arange(N) / 8000)).astype(np.int16)
    return pcm


ROOM = st.dictionaries(st.sampled_from(PEOPLE),
                       st.one_of(st.none(), st.tuples(st.integers(200, 3000), st.integers(0, 32767))), min_size=1)


@settings(max_examples=200, deadline=None)
@given(ROOM, st.sets(st.sampled_from(PEOPLE)))
def test_everyone_hears_the_others_and_never_clips(room: dict[str, tuple[int, int] | None], muted: set[str]) -> None:
    mixer = Mixer(N)
    frames = {p: (tone(*spec) if spec else None) for p, spec in room.items()}
    out = mixer.mix(frames, muted=muted)
    talking = {p: f for p, f in frames.items() if f is not None and p not in muted and mixer.is_talking(f)}
    talkers = set(talking)
    assert out.talkers == frozenset(talkers)
    ceiling = dbfs_to_amplitude(-1.0)
    for p in room:
        heard = out.for_participant(p).astype(np.int64)
        assert np.max(np.abs(heard)) <= ceiling + 1   # limited, never wrapped
        others = sum((f.astype(np.int64) for q, f in talking.items() if q != p), np.zeros(N, dtype=np.int64))
        if np.max(np.abs(others)) <= ceiling:
            assert np.array_equal(heard, others), p      # exact below the ceiling: the others, not me
    silent = [p for p in room if p not in talkers]
    for a in silent:
        assert out.for_participant(a) is out.shared      # one shared mix for all who are not talking


@settings(max_examples=100, deadline=None)
@given(st.lists(st.integers(0, 32767), min_size=5, max_size=40))
def test_the_limiter_holds_the_ceiling_frame_after_frame(amps: list[int]) -> None:
    mixer = Mixer(N)
    ceiling = dbfs_to_amplitude(-1.0)
    for amp in amps:
        out = mixer.mix({"a": tone(400, amp), "b": tone(700, amp), "c": tone(1100, amp)})
        assert np.max(np.abs(out.shared.astype(np.int32))) <= ceiling + 1

"""bridge/rtp/codec.py, the codec seam of an RTP leg: G711Codec by SDP name (any case), one byte
per sample both ways at 8 kHz, a round trip close to the input (G.711's quantisation, a 1 kHz
tone keeps its frequency and level), silence for a lost stretch, and ValueError for a codec it
does not have.
"""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

from bridge.rtp.codec import PCM_RATE, G711Codec, codec_for


@pytest.mark.parametrize("name", ["PCMU", "pcmu", "PCMA", "Pcma"])
def test_a_g711_codec_by_name_in_any_case(name: str) -> None:
    c = codec_for(name)
    assert isinstance(c, G711Codec) and c.name == name.upper() and c.clock_rate == PCM_RATE == 8000


@pytest.mark.parametrize("name", ["opus", "G729", "", "PCM"])
def test_another_codec_is_a_value_error(name: str) -> None:
    with pytest.raises(ValueError):  # noqa: PT011 - g711's own message names the codec
        codec_for(name)


@pytest.mark.parametrize("name", ["PCMU", "PCMA"])
def test_a_tone_survives_the_round_trip(name: str) -> None:
    c = codec_for(name)
    t = np.arange(160) / 8000.0
    pcm = (8000 * np.sin(2 * np.pi * 1000 * t)).astype(np.int16)
    payload = c.encode(pcm)
    assert isinstance(payload, bytes) and len(payload) == 160
    back = c.decode(payload).astype(np.float64)
    assert back.shape == (160,)
    peak = np.argmax(np.abs(np.fft.rfft(back))) * 8000 / 160
    assert peak == 1000
    rms_in = np.sqrt(np.mean(pcm.astype(np.float64) ** 2))
    rms_out = np.sqrt(np.mean(back ** 2))
    assert abs(rms_out / rms_in - 1) < 0.03


@given(samples=st.lists(st.integers(-32768, 32767), min_size=1, max_size=400), law=st.sampled_from(["PCMU", "PCMA"]))
def test_the_error_of_g711_is_bounded_by_its_segment(samples: list[int], law: str) -> None:
    """Logarithmic quantisation: the error grows with the level, at most ~1/16 of it plus a step."""
    c = codec_for(law)
    pcm = np.array(samples, dtype=np.int16)
    back = c.decode(c.encode(pcm)).astype(np.int64)
    err = np.abs(back - pcm.astype(np.int64))
    assert np.all(err <= np.abs(pcm.astype(np.int64)) // 16 + 132), (pcm[err.argmax()], back[err.argmax()])


@pytest.mark.parametrize(("n", "size"), [(160, 160), (0, 0), (-5, 0), (480, 480)])
def test_conceal_is_silence_of_the_length_asked(n: int, size: int) -> None:
    out = codec_for("PCMU").conceal(n)
    assert out.dtype == np.int16 and out.shape == (size,) and not out.any()

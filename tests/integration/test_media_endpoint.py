"""Two MediaEndpoints in one process over 127.0.0.1: A plays, B echoes, A records.

Audio is judged by content (frequency, level, active duration, PESQ), never by counters.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from jego_call.media import analysis
from jego_call.media.endpoint import MediaEndpoint, enable_loopback_candidates
from jego_call.media.sinks import Analyser, VideoFrameCounter, WavRecorder
from jego_call.media.tracks import EchoTrack, FileSource, TestPatternVideo, ToneSource
from tests.helpers import until

SPEECH = Path(__file__).resolve().parent.parent / "data" / "speech_en_48k.wav"


@pytest.fixture(autouse=True)
def loopback() -> None:
    enable_loopback_candidates()


async def connect(a: MediaEndpoint, b: MediaEndpoint, video: bool = False) -> None:
    offer = await a.create_offer(audio=True, video=video)
    answer = await b.accept_offer(offer)
    await a.set_answer(answer)
    await asyncio.gather(a.wait_connected(10), b.wait_connected(10))


@pytest.fixture
async def closing() -> AsyncIterator[list[MediaEndpoint]]:
    eps: list[MediaEndpoint] = []
    yield eps
    for ep in eps:
        await ep.close()


async def echo_call(source: object, out: Path, seconds: float, closing: list[MediaEndpoint],
                    codecs: list[str] | None = None) -> tuple[MediaEndpoint, MediaEndpoint]:
    a = MediaEndpoint(source=source, sinks=[WavRecorder(out)], name="A")  # type: ignore[arg-type]
    echo = EchoTrack(rate=8000 if codecs else 48000)
    b = MediaEndpoint(source=echo, sinks=[echo], codecs=codecs, name="B")
    closing += [a, b]
    await connect(a, b)
    await asyncio.sleep(seconds)   # the call is held for the source's seconds of audio, and its echo
    return a, b


async def test_offer_has_loopback_host_candidate_and_no_stun(closing: list[MediaEndpoint]) -> None:
    a = MediaEndpoint()
    closing.append(a)
    sdp = await a.create_offer()
    assert "127.0.0.1" in sdp and "typ host" in sdp
    assert "typ srflx" not in sdp  # no STUN server was asked
    assert a.configuration.iceServers == []
    gatherer = a.pc.getTransceivers()[0].sender.transport.transport.iceGatherer
    assert gatherer._connection.stun_server is None  # not aiortc's default stun.l.google.com


async def test_tone_echo_keeps_frequency_level_and_duration(tmp_path: Path, closing: list[MediaEndpoint]) -> None:
    out = tmp_path / "tone.wav"
    tone_s = 3.0
    a, b = await echo_call(ToneSource(1000, -10, duration=tone_s), out, tone_s + 1.0, closing)
    stats = await a.stats()
    await a.close()
    x, rate = analysis.read_wav(out)
    active = analysis.active_duration(x, rate)
    start = int(0.5 * rate)
    body = x[start:start + int(2 * rate)]
    assert analysis.dominant_frequency(body, rate) == pytest.approx(1000, abs=20)
    # sent: sine at -10 dBFS peak = -13.01 dBFS RMS; two Opus legs; the stock -3 dB upmix would show as -6
    assert analysis.level_dbfs(body) == pytest.approx(analysis.sine_rms_dbfs(-10), abs=2.0)
    assert active >= 0.95 * tone_s
    assert stats["codec"] == "opus"
    assert stats["packets_sent"] >= 150 and stats["packets_received"] >= 150
    assert stats["packets_lost"] == 0
    assert stats["frames_on_time"] > 0.9


async def test_one_leg_level_within_half_a_db(closing: list[MediaEndpoint]) -> None:
    an = Analyser()
    a = MediaEndpoint(source=ToneSource(1000, -10), name="A")
    b = MediaEndpoint(sinks=[an], name="B")
    closing += [a, b]
    await connect(a, b)
    # 1.6 s of audio heard: the 1 s analysis window lies past the codec's start-up
    await until(lambda: an.samples >= 1.6 * an.rate, 10, "1.6 s of audio at B")
    assert an.dominant_hz == pytest.approx(1000, abs=5)
    assert an.level_dbfs == pytest.approx(analysis.sine_rms_dbfs(-10), abs=0.5)


async def test_pcmu_answer_forces_g711(tmp_path: Path, closing: list[MediaEndpoint]) -> None:
    out = tmp_path / "pcmu.wav"
    a, b = await echo_call(ToneSource(1000, -10, duration=2.0), out, 2.8, closing, codecs=["PCMU"])
    answer = b.pc.localDescription.sdp
    assert "PCMU/8000" in answer and "opus" not in answer.lower()
    assert a.negotiated_codec() == "PCMU" and b.negotiated_codec() == "PCMU"
    await a.close()
    x, rate = analysis.read_wav(out)
    assert rate == 8000
    body = x[int(0.5 * rate):int(1.8 * rate)]
    assert analysis.dominant_frequency(body, rate) == pytest.approx(1000, abs=20)
    assert analysis.level_dbfs(body) == pytest.approx(analysis.sine_rms_dbfs(-10), abs=1.0)
    assert analysis.active_duration(x, rate) >= 0.95 * 2.0


@pytest.mark.slow
async def test_speech_echo_pesq(tmp_path: Path, closing: list[MediaEndpoint]) -> None:
    out = tmp_path / "speech.wav"
    ref, rate = analysis.read_wav(SPEECH)
    seconds = ref.size / rate
    a, _b = await echo_call(FileSource(SPEECH), out, seconds + 1.0, closing)
    await a.close()
    deg, deg_rate = analysis.read_wav(out)
    assert deg_rate == rate
    score = analysis.pesq_score(ref, deg, rate, "wb")
    print(f"speech A->B(echo)->A, two Opus legs at 32 kb/s: PESQ wb {score:.2f}")
    assert score >= 3.3


async def test_video_test_pattern_arrives(closing: list[MediaEndpoint]) -> None:
    counter = VideoFrameCounter()
    a = MediaEndpoint(video_source=TestPatternVideo(160, 120, fps=15), name="A")
    b = MediaEndpoint(video_sinks=[counter], name="B")
    closing += [a, b]
    await connect(a, b, video=True)
    await until(lambda: counter.frames >= 15, 10, "15 decoded frames")
    assert (counter.width, counter.height) == (160, 120)
    assert (await a.stats())["video"]["packets_sent"] > 0


async def test_wait_connected_times_out_without_answer(closing: list[MediaEndpoint]) -> None:
    from jego_call.media.endpoint import MediaError

    a = MediaEndpoint()
    closing.append(a)
    await a.create_offer()
    with pytest.raises(MediaError):
        await a.wait_connected(0.3)


async def test_mp4_recording_has_audio_and_video(tmp_path: Path, closing: list[MediaEndpoint]) -> None:
    import av

    from jego_call.media.sinks import Mp4Recorder

    out = tmp_path / "call.mp4"
    a = MediaEndpoint(source=ToneSource(440), video_source=TestPatternVideo(160, 120), name="A")
    b = MediaEndpoint(recorder=Mp4Recorder(out), name="B")
    closing += [a, b]
    await connect(a, b, video=True)
    await asyncio.sleep(3.0)   # a recording of 3 s of call: the file's length is what is judged
    await b.close()
    with av.open(str(out)) as c:
        kinds = {s.type: s.frames for s in c.streams}
    assert kinds.get("audio", 0) > 50 and kinds.get("video", 0) > 10, kinds

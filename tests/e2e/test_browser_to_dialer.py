"""Chromium calls a `jego dial answer` dialer; the dialer's recording holds the browser's tone.

Chromium's fake microphone plays a WAV we make (a 660 Hz tone), so the test can judge the
audio that crossed Chromium's Opus encoder, SRTP and our aiortc endpoint by its content.
"""

from __future__ import annotations

import json
import subprocess
import sys
import time
import wave
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
from playwright.sync_api import Browser, BrowserContext, expect, sync_playwright

from jego_call.media.analysis import active_duration, dominant_frequency, level_dbfs, read_wav

from ..conftest import PASSWORD, ROOT, LiveServer, make_user
from .conftest import ARGS, CHROMIUM, add_contact, open_user

pytestmark = pytest.mark.browser

TONE_HZ = 660.0


def write_tone(path: Path, freq: float, seconds: float = 30.0, rate: int = 48000, peak_dbfs: float = -10.0) -> None:
    t = np.arange(int(seconds * rate)) / rate
    pcm = (10 ** (peak_dbfs / 20) * 32767 * np.sin(2 * np.pi * freq * t)).astype("<i2")
    with wave.open(str(path), "wb") as w:
        w.setnchannels(1)
        w.setsampwidth(2)
        w.setframerate(rate)
        w.writeframes(pcm.tobytes())


@pytest.fixture(scope="module")
def tone_browser(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Browser]:
    wav = tmp_path_factory.mktemp("fake-mic") / "tone.wav"
    write_tone(wav, TONE_HZ)
    with sync_playwright() as pw:
        b = pw.chromium.launch(executable_path=CHROMIUM, headless=True,
                               args=[*ARGS, f"--use-file-for-fake-audio-capture={wav}"])
        yield b
        b.close()


def test_browser_calls_dialer_and_dialer_hears_the_tone(tone_browser: Browser, live_server: LiveServer,
                                                      tmp_path: Path) -> None:
    contexts: list[BrowserContext] = []
    make_user(live_server, "bob")
    rec = tmp_path / "bob.wav"
    dialer = subprocess.Popen(
        [sys.executable, "-m", "jego_call.cli.main", "dial", "answer", "--server", live_server.url,
         "--user", "bob", "--password", PASSWORD, "--record", str(rec), "--count", "1", "--json", "--quiet"],
        cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        alice = open_user(tone_browser, contexts, live_server, "alice")
        add_contact(alice, "bob", "online")
        alice.get_by_test_id("contact-bob").click()
        alice.get_by_test_id("call-audio").click()
        expect(alice.get_by_test_id("call-state")).to_have_text("connected", timeout=20_000)
        time.sleep(5.0)   # the call is held for 5 s of audio: the dialer's recording is judged
        alice.get_by_test_id("hangup").click()
        expect(alice.get_by_test_id("call-state")).to_have_text("ended", timeout=10_000)
        out, err = dialer.communicate(timeout=30)
    finally:
        if dialer.poll() is None:
            dialer.kill()
        for c in contexts:
            c.close()
    assert dialer.returncode == 0, err
    verdict = json.loads(out.strip().splitlines()[-1])
    assert verdict["outcome"] == "answered"
    samples, rate = read_wav(rec)
    # Judge the middle of the call: skip the first second (ICE, jitter buffer fill).
    middle = samples[rate: rate + 3 * rate]
    assert abs(dominant_frequency(middle, rate) - TONE_HZ) <= 10.0
    assert level_dbfs(middle) > -30.0, "the tone arrived far too quietly"
    assert active_duration(samples, rate) >= 4.0

"""Chromium calls a phone number through the dial pad: signalling -> bridge -> simulated carrier.

Chromium's fake microphone plays a 660 Hz WAV we make; the carrier's recording of the call must
hold that tone (it crossed Chromium's Opus, our bridge's transcoding to G.711 and pyVoIP's RTP).
DTMF keys pressed in the page reach the carrier's call record; a busy number shows plain words;
the call history lists the calls.
"""

from __future__ import annotations

import time
from collections.abc import Iterator

import pytest
from playwright.sync_api import Browser, BrowserContext, expect, sync_playwright

from jego_call.media.analysis import dominant_frequency, level_dbfs, read_wav

from ..conftest import LiveServer
from ..integration.bridge_util import carrier_record, phone_server
from .conftest import ARGS, CHROMIUM, open_user
from .test_browser_to_dialer import write_tone

pytestmark = pytest.mark.browser

TONE_HZ = 660.0
ECHO_NUMBER = "+8613800138000"


@pytest.fixture(scope="module")
def tone_browser(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Browser]:
    wav = tmp_path_factory.mktemp("fake-mic") / "tone660.wav"
    write_tone(wav, TONE_HZ)
    with sync_playwright() as pw:
        b = pw.chromium.launch(executable_path=CHROMIUM, headless=True,
                               args=[*ARGS, f"--use-file-for-fake-audio-capture={wav}"])
        yield b
        b.close()


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LiveServer]:
    s = phone_server(tmp_path_factory.mktemp("phone"))
    yield s
    s.stop()


def test_dial_pad_call_reaches_the_phone_with_the_tone_and_dtmf(tone_browser: Browser, server: LiveServer) -> None:
    contexts: list[BrowserContext] = []
    try:
        alice = open_user(tone_browser, contexts, server, "alice", register=False)
        alice.get_by_test_id("dialpad-input").fill("138 0013 8000")
        alice.get_by_test_id("call-phone").click()
        expect(alice.get_by_test_id("call-state")).to_have_text("connected", timeout=20_000)
        time.sleep(4.0)
        for key in ("1", "*", "#"):
            alice.get_by_test_id(f"dtmf-{key}").click()
            time.sleep(0.3)
        time.sleep(1.0)
        alice.get_by_test_id("hangup").click()
        expect(alice.get_by_test_id("call-state")).to_have_text("ended", timeout=10_000)
        expect(alice.get_by_test_id("call-history").get_by_test_id("call-history-item").first).to_contain_text(
            ECHO_NUMBER, timeout=10_000)
    finally:
        for c in contexts:
            c.close()
    cdr = carrier_record(server, ECHO_NUMBER)
    assert cdr["dtmf"] == "1*#"
    samples, rate = read_wav(cdr["recording"])
    middle = samples[int(1.5 * rate): int(4.5 * rate)]  # after the answer, before the keys
    assert abs(dominant_frequency(middle, rate) - TONE_HZ) <= TONE_HZ * 0.01
    assert level_dbfs(middle) > -35.0, "the tone arrived far too quietly"  # Chromium applies its own gain control


def test_busy_number_is_reported_in_plain_words(tone_browser: Browser, server: LiveServer) -> None:
    contexts: list[BrowserContext] = []
    try:
        alice = open_user(tone_browser, contexts, server, "alice", register=False)
        alice.get_by_test_id("dialpad-input").fill("+86 139 0000 0486")
        alice.get_by_test_id("call-phone").click()
        reason = alice.get_by_test_id("call-end-reason")
        expect(reason).to_have_attribute("data-reason", "busy", timeout=20_000)
        expect(reason).to_contain_text("The number is busy")
        alice.get_by_test_id("dialpad-input").fill("110")
        alice.get_by_test_id("call-phone").click()
        expect(reason).to_have_attribute("data-reason", "emergency", timeout=10_000)
        expect(reason).to_contain_text("use a local phone")
    finally:
        for c in contexts:
            c.close()




def test_browser_answers_a_call_from_a_phone(tone_browser: Browser, server: LiveServer) -> None:
    """`jego carrier call` rings bob's DID; bob answers in Chromium; the phone hears bob's tone."""
    import threading

    from ..integration.bridge_util import carrier_call

    contexts: list[BrowserContext] = []
    result: dict[str, object] = {}

    def phone() -> None:
        result["rc"], result["res"] = carrier_call(server, ECHO_NUMBER, "+8675512345678", "--duration", "5")

    caller = threading.Thread(target=phone)
    try:
        bob = open_user(tone_browser, contexts, server, "bob", register=False)
        caller.start()
        expect(bob.get_by_test_id("call-state")).to_have_text("incoming", timeout=20_000)
        expect(bob.get_by_test_id("incoming")).to_contain_text(ECHO_NUMBER)
        bob.get_by_test_id("answer").click()
        expect(bob.get_by_test_id("call-state")).to_have_text("connected", timeout=20_000)
        caller.join(60)
        expect(bob.get_by_test_id("call-state")).to_have_text("ended", timeout=20_000)
        expect(bob.get_by_test_id("call-end-reason")).to_have_attribute("data-reason", "hangup")
    finally:
        caller.join(60)
        for c in contexts:
            c.close()
    assert result.get("rc") == 0, result
    res = result["res"]
    assert isinstance(res, dict) and res["answered"], res
    heard, rate = read_wav(res["recording"])
    middle = heard[rate: 4 * rate]  # the phone's recording of what bob's browser sent
    assert abs(dominant_frequency(middle, rate) - TONE_HZ) <= 0.01 * TONE_HZ
    assert level_dbfs(middle) > -35.0

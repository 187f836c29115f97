"""Chromium calls a phone number through the dial pad: signalling -> bridge -> simulated carrier.

Chromium's fake microphone plays a 660 Hz WAV we make; the carrier's recording of the call must
hold that tone (it crossed Chromium's Opus, our bridge's transcoding to G.711 and pyVoIP's RTP).
DTMF keys pressed in the page reach the carrier's call record; a busy number shows plain words;
the call history lists the calls.
"""

from __future__ import annotations

import contextlib
import re
import time
from collections.abc import Iterator
from typing import Any

import pytest
from playwright.sync_api import Browser, BrowserContext, expect, sync_playwright

from jego_call.media.analysis import dominant_frequency, level_dbfs, read_wav

from ..conftest import LiveServer, http_json
from ..helpers import wait_for
from ..integration.bridge_util import carrier_record, phone_server
from .conftest import ARGS, CHROMIUM, open_as, open_user
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


# Chromium's own view of the call: its getStats() and the bridge's answer SDP.
STATS_JS = """async () => {
  const pc = window.jego.call.pc;
  const out = [];
  (await pc.getStats()).forEach((s) => out.push(s));
  return { stats: out, answer: pc.remoteDescription.sdp };
}"""


def check_browser_rtcp(seen: dict[str, Any]) -> None:
    """The bridge's lean leg keeps Chromium's statistics right: its RTCP RRs about the browser's
    stream give Chromium a round-trip time and loss (remote-inbound-rtp), its SRs a
    remote-outbound-rtp; what it sends arrives whole. Nothing asks for bandwidth feedback on
    audio (no transport-cc, no REMB in the answer), so none is owed."""
    by_type: dict[str, list[dict[str, Any]]] = {}
    for st in seen["stats"]:
        if st.get("kind", "audio") == "audio":
            by_type.setdefault(st["type"], []).append(st)
    [inbound] = by_type["inbound-rtp"]
    assert inbound["packetsReceived"] > 150 and inbound["packetsLost"] == 0, inbound
    [remote_in] = by_type["remote-inbound-rtp"]
    assert remote_in.get("roundTripTime") is not None and 0 <= remote_in["roundTripTime"] < 0.5, remote_in
    assert remote_in["packetsLost"] == 0, remote_in
    [remote_out] = by_type["remote-outbound-rtp"]
    assert remote_out["packetsSent"] > 100, remote_out
    audio = seen["answer"].split("m=audio", 1)[1].split("\nm=", 1)[0]
    assert "transport-cc" not in audio and "goog-remb" not in audio and "transport-wide-cc" not in audio, audio
    # RFC 2198: the bridge answers Chromium's red/48000/2 first, so Chromium sends RED (each frame
    # with the ones before it) and the bridge fills lost frames from the copies (issue 15)
    assert "red/48000/2" in audio and audio.split("\r\n", 1)[0].split(" ")[3] == "63", audio.split("\r\n", 1)[0]


def test_dial_pad_call_reaches_the_phone_with_the_tone_and_dtmf(tone_browser: Browser, server: LiveServer) -> None:
    contexts: list[BrowserContext] = []
    try:
        alice = open_user(tone_browser, contexts, server, "alice", register=False)
        alice.get_by_test_id("tab-phone").click()  # the dial pad has its own tab (issue 11)
        alice.get_by_test_id("dialpad-input").fill("138 0013 8000")
        alice.get_by_test_id("call-phone").click()
        expect(alice.get_by_test_id("call-state")).to_have_text("connected", timeout=20_000)
        time.sleep(4.0)   # the call is held for 4 s of audio before the digits
        for key in ("1", "*", "#"):
            alice.get_by_test_id(f"dtmf-{key}").click()
            time.sleep(0.3)   # pacing: one key press after another, as a person dials
        time.sleep(1.0)   # the call goes on a second after the last digit, before the hang-up
        seen = alice.evaluate(STATS_JS)
        alice.get_by_test_id("hangup").click()
        expect(alice.get_by_test_id("call-state")).to_have_text("ended", timeout=10_000)
        expect(alice.get_by_test_id("call-history").get_by_test_id("call-history-item").first).to_contain_text(
            ECHO_NUMBER, timeout=10_000)
    finally:
        for c in contexts:
            c.close()
    check_browser_rtcp(seen)
    cdr = carrier_record(server, ECHO_NUMBER)
    assert cdr["dtmf"] == "1*#"
    # Chromium sent RED (its stats name the primary, Opus): the bridge's lean leg counted the RED
    # packets it unwrapped, in its end-of-call line
    with contextlib.suppress(AssertionError):   # judged below, with what was found
        wait_for(lambda: re.findall(r"'red_received': (\d+)", server.log()), 10, "the end-of-call line", interval=0.2)
    red = re.findall(r"'red_received': (\d+)", server.log())
    assert red and int(red[-1]) > 150, red
    samples, rate = read_wav(cdr["recording"])
    middle = samples[int(1.5 * rate): int(4.5 * rate)]  # after the answer, before the keys
    assert abs(dominant_frequency(middle, rate) - TONE_HZ) <= TONE_HZ * 0.01
    assert level_dbfs(middle) > -35.0, "the tone arrived far too quietly"  # Chromium applies its own gain control


def test_busy_number_is_reported_in_plain_words(tone_browser: Browser, server: LiveServer) -> None:
    contexts: list[BrowserContext] = []
    try:
        alice = open_user(tone_browser, contexts, server, "alice", register=False)
        alice.get_by_test_id("tab-phone").click()
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



# Issue 11: each outcome is said once, in plain words, in the page's language: the words of the
# server's reason table (phone variants), never with the detail or a code appended.
OUTCOMES = [
    ("+8613900000486", "busy"), ("+8613900000404", "not_found"), ("+8613900000503", "congestion"),
    ("+8613900000020", "switched_off"), ("110", "emergency"), ("12345", "service_number"),
    ("+49 30 12345678", "rejected"), ("+86123", "service_number"),
]


@pytest.mark.parametrize("locale", ["en-US", "zh-CN"])
def test_each_phone_outcome_in_plain_words_once_in_both_languages(tone_browser: Browser, server: LiveServer,
                                                                 locale: str) -> None:
    status, words = http_json("GET", f"{server.url}/api/reasons")
    assert status == 200
    lang = "zh" if locale == "zh-CN" else "en"
    contexts: list[BrowserContext] = []
    try:
        page = open_as(tone_browser, contexts, server, "alice" if lang == "en" else "bob", register=False,
                       locale=locale)
        page.get_by_test_id("tab-phone").click()
        out = page.get_by_test_id("call-end-reason")
        seen = {}
        for number, reason in OUTCOMES:
            page.evaluate("document.getElementById('call-end-reason').dataset.reason = ''")
            page.get_by_test_id("dialpad-input").fill(number)
            page.get_by_test_id("call-phone").click()
            expect(out).to_have_attribute("data-reason", reason, timeout=20_000)
            expect(out).to_have_text(words[reason][f"phone_{lang}"])
            text = out.text_content() or ""
            assert "(" not in text and "（" not in text and "trunk" not in text, text
            seen[reason] = text
            if reason == "busy":  # the codes are there, behind "details"
                expect(page.get_by_test_id("call-end-details")).to_be_hidden()
                page.get_by_test_id("call-end-details-toggle").click()
                expect(page.get_by_test_id("call-end-details")).to_contain_text("SIP 486 · Q.850 17")
            expect(page.get_by_test_id("call-overlay")).to_be_hidden(timeout=10_000)
        if lang == "en":
            assert seen["emergency"] == "Emergency numbers cannot be called from the app: use a local phone"
            assert seen["not_found"] == "The number does not exist"
            assert seen["busy"] == "The number is busy"
        else:
            assert seen["emergency"] == "无法通过本应用拨打紧急电话，请使用当地电话"
            assert seen["not_found"] == "您拨打的号码不存在"
            assert seen["busy"] == "您拨打的号码正忙"
    finally:
        for c in contexts:
            c.close()


def test_phone_box_refuses_letters_and_says_why_before_dialling(tone_browser: Browser, server: LiveServer) -> None:
    contexts: list[BrowserContext] = []
    try:
        page = open_as(tone_browser, contexts, server, "alice", register=False)
        page.get_by_test_id("tab-phone").click()
        box, hint = page.get_by_test_id("dialpad-input"), page.get_by_test_id("dialpad-hint")
        box.press_sequentially("13a8b")
        expect(box).to_have_value("138")
        expect(hint).to_have_text("Only digits, +, * and # can be typed here")
        box.fill("alice")  # a username typed (or pasted) into the phone box does not become a call
        expect(box).to_have_value("")
        box.fill("")
        box.press_sequentially("13800138000")
        expect(box).to_have_value("138 0013 8000", timeout=10_000)  # formatted as typed
        expect(hint).to_have_text("China Mobile · mobile", timeout=10_000)
        box.fill("")
        for key in ("dialkey-1", "dialkey-1", "dialkey-9", "dialkey-9"):  # the keys type too
            page.get_by_test_id(key).click()
        page.get_by_test_id("dialpad-backspace").click()  # and backspace takes one off
        expect(box).to_have_value("119", timeout=10_000)
        history = page.get_by_test_id("call-history").get_by_test_id("call-history-item")
        page.get_by_test_id("history-refresh").evaluate("b => b.click()")
        before = history.count()
        # before dialling, the page says why these cannot be called; pressing Call places no call
        for number, reason in (("110", "emergency"), ("12345", "service_number"), ("+49 30 12345678", "rejected")):
            box.fill(number)
            status, words = http_json("GET", f"{server.url}/api/reasons")
            expect(hint).to_have_text(words[reason]["phone_en"], timeout=10_000)
            expect(page.get_by_test_id("call-state")).to_have_text("idle" if number == "110" else "ended")
            page.get_by_test_id("call-phone").click()
            expect(page.get_by_test_id("call-end-reason")).to_have_attribute("data-reason", reason, timeout=10_000)
            expect(page.get_by_test_id("call-overlay")).to_be_hidden()
        page.get_by_test_id("history-refresh").evaluate("b => b.click()")
        page.wait_for_timeout(500)
        assert history.count() == before  # nothing reached the server
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

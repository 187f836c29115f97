"""Groups in real headless Chromium (issue 16): a group made in the page, a message to it, and a
3-way group call in three browsers, each with its own tone as its microphone: every page hears the
two other tones through the server's conference and not its own (WebAudio FFT of what it plays),
and video flows in the mesh between the two members who joined with video."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from playwright.sync_api import Browser, BrowserContext, Page, expect, sync_playwright

from tests import helpers
from tests.helpers import T

from ..conftest import LiveServer
from ..integration.bridge_util import phone_server
from .conftest import ARGS, CHROMIUM, add_contact, open_as
from .test_browser_to_dialer import write_tone

pytestmark = pytest.mark.browser

TONES = {"mum": 500.0, "lili": 700.0, "wei": 1100.0}
TIMEOUT = 20_000

SPECTRUM = """async (freqs) => {
  const stream = window.jegoGroup.remoteAudio();
  if (!stream) return null;
  const ctx = new AudioContext();
  const src = ctx.createMediaStreamSource(stream);
  const an = ctx.createAnalyser();
  an.fftSize = 16384;
  an.smoothingTimeConstant = 0.5;
  src.connect(an);
  await new Promise((r) => setTimeout(r, 1500));
  const data = new Float32Array(an.frequencyBinCount);
  an.getFloatFrequencyData(data);
  const bin = ctx.sampleRate / an.fftSize;
  const out = {};
  for (const f of freqs) {
    let m = -200;
    const c = Math.round(f / bin);
    for (let i = c - 3; i <= c + 3; i++) m = Math.max(m, data[i]);
    out[String(f)] = m;
  }
  await ctx.close();
  return out;
}"""


@pytest.fixture(scope="module")
def browsers(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, Browser]]:
    """One Chromium per member, each with its own tone as the fake microphone."""
    tmp = tmp_path_factory.mktemp("fake-mics")
    with sync_playwright() as pw:
        out = {}
        for user, hz in TONES.items():
            wav = tmp / f"{user}.wav"
            write_tone(wav, hz, seconds=60.0, peak_dbfs=-12.0)
            out[user] = pw.chromium.launch(executable_path=CHROMIUM, headless=True,
                                           args=[*ARGS, f"--use-file-for-fake-audio-capture={wav}"])
        yield out
        for b in out.values():
            b.close()


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LiveServer]:
    s = phone_server(tmp_path_factory.mktemp("groups-e2e"))
    yield s
    s.stop()


@pytest.fixture
def contexts() -> Iterator[list[BrowserContext]]:
    made: list[BrowserContext] = []
    yield made
    for c in made:
        c.close()


def wait_for(cond: Callable[[], T | None], timeout: float = 20.0, what: str = "condition") -> T:
    """tests.helpers.wait_for with this file's 20 s default and a browser-friendly 0.25 s poll."""
    return helpers.wait_for(cond, timeout, what, interval=0.25)


def group_stats(page: Page) -> dict[str, Any] | None:
    got: dict[str, Any] | None = page.evaluate("window.jegoGroup.stats()")
    return got


def test_group_chat_and_a_three_way_group_call(browsers: dict[str, Browser], server: LiveServer,
                                               contexts: list[BrowserContext], tmp_path: Path) -> None:
    pages = {u: open_as(browsers[u], contexts, server, u) for u in TONES}
    mum, lili, wei = pages["mum"], pages["lili"], pages["wei"]
    add_contact(mum, "lili")
    add_contact(mum, "wei")
    # mum makes the group in the page
    mum.get_by_test_id("group-new").click()
    mum.get_by_test_id("group-name").fill("一家人 🏮")
    mum.get_by_test_id("group-pick-lili").check()
    mum.get_by_test_id("group-pick-wei").check()
    mum.get_by_test_id("group-dialog-ok").click()
    expect(mum.get_by_test_id("selected")).to_have_text("一家人 🏮", timeout=TIMEOUT)
    gid = mum.evaluate("[...window.jegoChat.chats.keys()].find((k) => k.startsWith('group:')).slice(6)")
    expect(lili.get_by_test_id(f"group-{gid}")).to_be_visible(timeout=TIMEOUT)
    mum.locator("[data-testid=chat-pane] section:not([hidden]) [data-testid=message-input]").fill("晚上视频？")
    mum.locator("[data-testid=chat-pane] section:not([hidden]) [data-testid=message-send]").click()
    lili.get_by_test_id(f"group-{gid}").click()
    chat = lili.locator(f"[data-testid='chat-group:{gid}']")
    expect(chat.get_by_text("晚上视频？")).to_be_visible(timeout=TIMEOUT)
    expect(chat.get_by_test_id("system-line").first).to_contain_text("mum")
    # the receipt line on mum's side counts lili (delivered, read: her chat is open)
    expect(mum.get_by_test_id("group-receipts").last).to_contain_text("read by 1", timeout=TIMEOUT)

    # the group call: mum starts it with video, lili joins from the ring with video, wei joins audio only
    mum.get_by_test_id("group-call-video").click()
    expect(lili.get_by_test_id("group-incoming")).to_be_visible(timeout=TIMEOUT)
    lili.get_by_test_id("group-incoming-join").click()
    expect(wei.get_by_test_id("group-incoming")).to_be_visible(timeout=TIMEOUT)
    wei.get_by_test_id("group-incoming-decline").click()
    wei.get_by_test_id(f"group-{gid}").click()
    wei.get_by_test_id("group-call-join").click()
    for page in pages.values():
        for u in TONES:
            expect(page.get_by_test_id(f"gtile-{u}")).to_have_attribute("data-state", "joined", timeout=TIMEOUT)

    # audio both ways for each: every page receives the conference's mix, and it holds the two others
    for user, page in pages.items():
        def receiving(p: Page = page) -> bool:
            return bool((group_stats(p) or {}).get("audio", {}).get("packetsReceived", 0) > 100)

        def spectrum_of(p: Page = page) -> Any:
            return p.evaluate(SPECTRUM, list(TONES.values()))

        wait_for(receiving, what=f"{user} receives audio")
        spectrum = wait_for(spectrum_of, what=f"{user} spectrum")
        others = [v for u, v in TONES.items() if u != user]
        own = TONES[user]
        levels = {float(k): v for k, v in spectrum.items()}
        for f in others:
            assert levels[f] > -60, (user, levels)
        assert levels[own] < min(levels[f] for f in others) - 20, (user, levels)
        st = group_stats(page) or {}
        assert st["audio"]["packetsSent"] > 100, (user, st)
    # video between mum and lili (the mesh), none for wei
    wait_for(lambda: (group_stats(mum) or {}).get("video", {}).get("lili", 0) > 10, what="mum sees lili")
    wait_for(lambda: (group_stats(lili) or {}).get("video", {}).get("mum", 0) > 10, what="lili sees mum")
    assert (group_stats(wei) or {}).get("video") == {}
    shots = tmp_path / "screens"
    shots.mkdir()
    mum.screenshot(path=str(shots / "group-call-mum.png"))
    # wei leaves: only wei's legs end; mum and lili stay in the call
    wei.get_by_test_id("group-leave").click()
    expect(mum.get_by_test_id("gtile-wei")).to_have_attribute("data-state", "left", timeout=TIMEOUT)
    expect(lili.get_by_test_id("gtile-mum")).to_have_attribute("data-state", "joined")
    for page in (mum, lili):
        page.get_by_test_id("group-leave").click()
    expect(lili.get_by_test_id("group-outcome")).to_be_visible(timeout=TIMEOUT)
    for page in pages.values():
        assert page.errors == [], page.errors  # type: ignore[attr-defined]

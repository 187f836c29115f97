"""Browser-to-browser calls in real headless Chromium: audio, video, and each outcome."""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

import pytest
from playwright.sync_api import Browser, BrowserContext, Page, expect

from tests import helpers

from ..conftest import LiveServer
from .conftest import add_contact, open_user

pytestmark = pytest.mark.browser

TIMEOUT = 15_000


def stats(page: Page) -> dict[str, Any]:
    result: dict[str, Any] = page.evaluate("window.jego.stats()")
    assert result is not None, "no live call on this page"
    return result


def state(page: Page) -> Any:
    return expect(page.get_by_test_id("call-state"))


def call(caller: Page, callee_name: str, kind: str = "audio") -> None:
    caller.get_by_test_id(f"contact-{callee_name}").click()
    caller.get_by_test_id(f"call-{kind}").click()


def connect(caller: Page, callee: Page, callee_name: str, kind: str = "audio") -> None:
    call(caller, callee_name, kind)
    state(callee).to_have_text("incoming", timeout=TIMEOUT)
    state(caller).to_have_text("ringing", timeout=TIMEOUT)
    callee.get_by_test_id("answer").click()
    state(callee).to_have_text("connected", timeout=TIMEOUT)
    state(caller).to_have_text("connected", timeout=TIMEOUT)


def wait_for(cond: Callable[[], bool], timeout: float = 15.0) -> None:
    """tests.helpers.wait_for with this file's 15 s default and a 0.2 s poll (each look asks the page)."""
    helpers.wait_for(cond, timeout, "the page's counters", interval=0.2)


def hang_up(page: Page, other: Page) -> None:
    page.get_by_test_id("hangup").click()
    state(page).to_have_text("ended", timeout=TIMEOUT)
    state(other).to_have_text("ended", timeout=TIMEOUT)
    expect(other.get_by_test_id("call-end-reason")).to_have_attribute("data-reason", "hangup")


@pytest.fixture
def pair(browser: Browser, contexts: list[BrowserContext], live_server: LiveServer) -> tuple[Page, Page]:
    alice = open_user(browser, contexts, live_server, "alice")
    bob = open_user(browser, contexts, live_server, "bob")
    add_contact(alice, "bob")
    add_contact(bob, "alice")
    return alice, bob


def test_audio_call_flows_both_ways(pair: tuple[Page, Page]) -> None:
    alice, bob = pair
    connect(alice, bob, "bob", "audio")
    expect(alice.get_by_test_id("presence-bob")).to_have_text("in call", timeout=TIMEOUT)
    # Audio must flow both ways for at least 3 s: bytes and packets keep growing on each side.
    wait_for(lambda: stats(alice)["audio"]["packetsReceived"] > 0 and stats(bob)["audio"]["packetsReceived"] > 0)
    a0, b0 = stats(alice)["audio"], stats(bob)["audio"]
    time.sleep(3.5)   # real time is the subject: audio keeps flowing over these seconds
    a1, b1 = stats(alice)["audio"], stats(bob)["audio"]
    for before, after in ((a0, a1), (b0, b1)):
        # Opus at 20 ms: ~50 packets a second; allow for DTX and scheduling.
        assert after["packetsReceived"] - before["packetsReceived"] >= 100, (before, after)
        assert after["bytesReceived"] - before["bytesReceived"] > 2000, (before, after)
        assert after["packetsSent"] - before["packetsSent"] >= 100, (before, after)
    assert "received" in alice.get_by_test_id("call-stats").inner_text()
    timer = alice.get_by_test_id("call-timer").inner_text()
    assert timer != "00:00"
    hang_up(alice, bob)
    expect(bob.get_by_test_id("presence-alice")).to_have_text("online", timeout=TIMEOUT)


def test_video_call_decodes_frames_both_ways(pair: tuple[Page, Page]) -> None:
    alice, bob = pair
    connect(alice, bob, "bob", "video")
    wait_for(lambda: stats(alice)["video"]["framesDecoded"] > 10 and stats(bob)["video"]["framesDecoded"] > 10)
    a0, b0 = stats(alice), stats(bob)
    time.sleep(3.0)   # real time is the subject: frames keep being decoded over these seconds
    a1, b1 = stats(alice), stats(bob)
    for before, after in ((a0, a1), (b0, b1)):
        assert after["video"]["framesDecoded"] - before["video"]["framesDecoded"] >= 20, (before, after)
        assert after["audio"]["packetsReceived"] - before["audio"]["packetsReceived"] >= 80, (before, after)
    # camera off stops sending frames from bob's side
    bob.get_by_test_id("camera").click()
    expect(bob.get_by_test_id("camera")).to_have_attribute("aria-pressed", "true")
    bob.get_by_test_id("mute").click()
    expect(bob.get_by_test_id("mute")).to_have_attribute("aria-pressed", "true")
    hang_up(bob, alice)


def test_decline(pair: tuple[Page, Page]) -> None:
    alice, bob = pair
    call(alice, "bob")
    state(bob).to_have_text("incoming", timeout=TIMEOUT)
    expect(bob.get_by_test_id("incoming")).to_be_visible()
    bob.get_by_test_id("decline").click()
    state(alice).to_have_text("ended", timeout=TIMEOUT)
    expect(alice.get_by_test_id("call-end-reason")).to_have_attribute("data-reason", "declined")
    expect(alice.get_by_test_id("call-end-reason")).to_contain_text("declined")


def test_busy(browser: Browser, contexts: list[BrowserContext], live_server: LiveServer,
              pair: tuple[Page, Page]) -> None:
    alice, bob = pair
    carol = open_user(browser, contexts, live_server, "carol")
    add_contact(carol, "bob")
    connect(alice, bob, "bob")
    call(carol, "bob")
    state(carol).to_have_text("ended", timeout=TIMEOUT)
    expect(carol.get_by_test_id("call-end-reason")).to_have_attribute("data-reason", "busy")
    state(bob).to_have_text("connected")
    hang_up(alice, bob)


def test_no_answer(pair: tuple[Page, Page]) -> None:
    alice, bob = pair  # the live server rings for 5 s
    call(alice, "bob")
    state(bob).to_have_text("incoming", timeout=TIMEOUT)
    state(alice).to_have_text("ended", timeout=TIMEOUT)
    expect(alice.get_by_test_id("call-end-reason")).to_have_attribute("data-reason", "no_answer")
    state(bob).to_have_text("ended")


def test_offline_contact_is_unavailable(browser: Browser, contexts: list[BrowserContext],
                                        live_server: LiveServer) -> None:
    alice = open_user(browser, contexts, live_server, "alice")
    dave = open_user(browser, contexts, live_server, "dave")
    add_contact(alice, "dave")
    contexts[-1].close()
    contexts.pop()
    expect(alice.get_by_test_id("presence-dave")).to_have_text("offline", timeout=TIMEOUT)
    call(alice, "dave")
    state(alice).to_have_text("ended", timeout=TIMEOUT)
    expect(alice.get_by_test_id("call-end-reason")).to_have_attribute("data-reason", "unavailable")
    assert dave.is_closed()


def test_two_tabs_ring_and_first_answer_wins(browser: Browser, contexts: list[BrowserContext],
                                             live_server: LiveServer) -> None:
    alice = open_user(browser, contexts, live_server, "alice")
    bob = open_user(browser, contexts, live_server, "bob")
    bob_tab2 = bob.context.new_page()  # same storage: logged in as bob
    bob_tab2.goto(live_server.url + "/")
    expect(bob_tab2.get_by_test_id("connection")).to_have_text("online", timeout=TIMEOUT)
    add_contact(alice, "bob")
    call(alice, "bob")
    state(bob).to_have_text("incoming", timeout=TIMEOUT)
    state(bob_tab2).to_have_text("incoming", timeout=TIMEOUT)
    bob_tab2.get_by_test_id("answer").click()
    state(alice).to_have_text("connected", timeout=TIMEOUT)
    state(bob).to_have_text("ended", timeout=TIMEOUT)
    expect(bob.get_by_test_id("call-end-reason")).to_have_attribute("data-reason", "answered_elsewhere")
    hang_up(alice, bob_tab2)

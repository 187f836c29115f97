"""Chat in real headless Chromium: text both ways with delivered/read ticks, unread counts,
a photo through the file input, a voice message from the fake microphone, offline catch-up."""

from __future__ import annotations

import contextlib
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from PIL import Image
from playwright.sync_api import Browser, BrowserContext, Locator, Page, expect

from tests.helpers import wait_for

from ..conftest import LiveServer
from .conftest import add_contact, open_user

pytestmark = pytest.mark.browser

TIMEOUT = 15_000


def chat(page: Page, peer: str) -> Locator:
    return page.get_by_test_id(f"chat-{peer}")


def open_chat(page: Page, peer: str) -> Locator:
    page.get_by_test_id(f"contact-{peer}").click()
    pane = chat(page, peer)
    expect(pane).to_be_visible(timeout=TIMEOUT)
    return pane


def say(page: Page, peer: str, text: str) -> None:
    pane = chat(page, peer)
    pane.get_by_test_id("message-input").fill(text)
    pane.get_by_test_id("message-send").click()


def items(pane: Locator) -> Locator:
    return pane.get_by_test_id("message-list").get_by_test_id("message-item")


def collect_errors(pages: list[Page]) -> list[str]:
    """Uncaught script errors of `pages`, appended as they happen."""
    errs: list[str] = []
    for page in pages:
        page.on("pageerror", lambda exc: errs.append(str(exc)))
    return errs


@pytest.fixture
def pair(browser: Browser, contexts: list[BrowserContext], live_server: LiveServer) -> Iterator[tuple[Page, Page]]:
    alice = open_user(browser, contexts, live_server, "alice")
    bob = open_user(browser, contexts, live_server, "bob")
    errs = collect_errors([alice, bob])
    add_contact(alice, "bob")
    add_contact(bob, "alice")
    yield alice, bob
    assert errs == []


def test_text_both_ways_with_receipts_and_unread_counts(pair: tuple[Page, Page]) -> None:
    alice, bob = pair
    a_chat = open_chat(alice, "bob")
    say(alice, "bob", "你好 Bob, how is Shanghai?")
    mine = items(a_chat).last
    expect(mine).to_contain_text("你好 Bob, how is Shanghai?", timeout=TIMEOUT)
    # bob is online but has not opened the chat: delivered, not read; his badge counts it
    expect(mine.get_by_test_id("receipt")).to_have_text("delivered", timeout=TIMEOUT)
    expect(bob.get_by_test_id("unread-alice")).to_have_text("1", timeout=TIMEOUT)
    say(alice, "bob", "second one")
    expect(bob.get_by_test_id("unread-alice")).to_have_text("2", timeout=TIMEOUT)
    expect(items(a_chat).last.get_by_test_id("receipt")).to_have_text("delivered", timeout=TIMEOUT)
    # bob opens the chat: both are read, the badge goes away
    b_chat = open_chat(bob, "alice")
    expect(items(b_chat)).to_have_count(2, timeout=TIMEOUT)
    expect(items(b_chat).first).to_contain_text("你好 Bob")
    expect(bob.get_by_test_id("unread-alice")).to_be_hidden(timeout=TIMEOUT)
    for i in range(2):
        expect(items(a_chat).nth(i).get_by_test_id("receipt")).to_have_text("read", timeout=TIMEOUT)
    # incoming messages carry no receipt of their own
    expect(items(b_chat).first.get_by_test_id("receipt")).to_have_count(0)
    # and back: alice has the chat open, so bob's reply goes straight to read
    say(bob, "alice", "Sunny! 阳光明媚")
    expect(items(a_chat).last).to_contain_text("阳光明媚", timeout=TIMEOUT)
    expect(items(b_chat).last.get_by_test_id("receipt")).to_have_text("read", timeout=TIMEOUT)
    expect(alice.get_by_test_id("unread-bob")).to_be_hidden()
    # sequence numbers run per conversation
    assert [items(a_chat).nth(i).get_attribute("data-seq") for i in range(3)] == ["1", "2", "3"]
    # empty text is refused in the client, nothing is sent
    say(alice, "bob", "   ")
    expect(a_chat.get_by_test_id("chat-error")).to_contain_text("Type a message")
    expect(items(a_chat)).to_have_count(3)


def test_photo_via_file_input(pair: tuple[Page, Page], tmp_path: Path) -> None:
    alice, bob = pair
    path = tmp_path / "great-wall.png"
    rng = np.random.default_rng(3)
    Image.fromarray(rng.integers(0, 256, (600, 800, 3), dtype=np.uint8)).save(path)
    a_chat = open_chat(alice, "bob")
    b_chat = open_chat(bob, "alice")
    a_chat.get_by_test_id("file-input").set_input_files(str(path))
    for pane in (a_chat, b_chat):
        item = items(pane).last
        expect(item).to_have_attribute("data-kind", "photo", timeout=TIMEOUT)
        thumb = item.get_by_test_id("photo-thumb")
        expect(thumb).to_be_visible(timeout=TIMEOUT)
        # the thumbnail (320 px wide), not the full photo, is what the list loads
        def decoded(t: Locator = thumb) -> int:
            return int(t.evaluate("img => img.naturalWidth"))
        with contextlib.suppress(AssertionError):   # judged below, with the size
            wait_for(decoded, 10, "the thumbnail decoded", interval=0.1)
        assert thumb.evaluate("img => [img.naturalWidth, img.naturalHeight]") == [320, 240]
    expect(items(a_chat).last.get_by_test_id("receipt")).to_have_text("read", timeout=TIMEOUT)
    # a click opens the full size
    items(b_chat).last.get_by_test_id("photo-thumb").click()
    full = bob.get_by_test_id("photo-full")
    expect(full).to_be_visible(timeout=TIMEOUT)
    with contextlib.suppress(AssertionError):   # judged below, with the size
        wait_for(lambda: full.evaluate("img => img.naturalWidth"), 10, "the full photo decoded", interval=0.1)
    assert full.evaluate("img => [img.naturalWidth, img.naturalHeight]") == [800, 600]
    bob.get_by_test_id("photo-viewer").click()
    expect(bob.get_by_test_id("photo-viewer")).to_be_hidden()
    # any other file: a download link with its name
    doc = tmp_path / "visa-form.pdf"
    doc.write_bytes(b"%PDF-1.4 not really" + bytes(range(256)) * 40)
    a_chat.get_by_test_id("file-input").set_input_files(str(doc))
    link = items(b_chat).last.get_by_test_id("file-link")
    expect(link).to_contain_text("visa-form.pdf", timeout=TIMEOUT)
    with bob.expect_download() as dl:
        link.click()
    saved = tmp_path / "downloaded.pdf"
    dl.value.save_as(saved)
    assert saved.read_bytes() == doc.read_bytes()


def test_voice_message_from_the_microphone_plays_inline(pair: tuple[Page, Page]) -> None:
    alice, bob = pair
    a_chat = open_chat(alice, "bob")
    b_chat = open_chat(bob, "alice")
    rec = a_chat.get_by_test_id("voice-record")
    rec.click()
    expect(rec).to_have_attribute("aria-pressed", "true", timeout=TIMEOUT)
    time.sleep(2.5)   # a 2.5 s voice message: its length is what is judged
    rec.click()
    expect(rec).to_have_attribute("aria-pressed", "false", timeout=TIMEOUT)
    item = items(b_chat).last
    expect(item).to_have_attribute("data-kind", "voice", timeout=TIMEOUT)
    expect(items(a_chat).last.get_by_test_id("receipt")).to_have_text("read", timeout=TIMEOUT)
    # the server measured the recording's length with av (MediaRecorder WebM has no duration header)
    duration = items(a_chat).last.locator(".duration").inner_text()
    assert duration in ("0:02", "0:03"), duration
    audio = item.get_by_test_id("voice-audio")
    result: dict[str, Any] = audio.evaluate("""async (a) => {
        a.muted = true;
        await a.play();
        await new Promise((r) => setTimeout(r, 1200));
        return { time: a.currentTime, error: a.error && a.error.code, paused: a.paused };
    }""")
    assert result["error"] is None and result["time"] > 0.5, result


def test_offline_recipient_catches_up_in_order(browser: Browser, contexts: list[BrowserContext],
                                               live_server: LiveServer) -> None:
    alice = open_user(browser, contexts, live_server, "alice")
    bob = open_user(browser, contexts, live_server, "bob")
    add_contact(alice, "bob")
    add_contact(bob, "alice", presence="online")
    bob.context.close()
    expect(alice.get_by_test_id("presence-bob")).to_have_text("offline", timeout=TIMEOUT)
    a_chat = open_chat(alice, "bob")
    for i in range(3):
        say(alice, "bob", f"while you were away {i}")
        expect(items(a_chat).nth(i).get_by_test_id("receipt")).to_have_text("sent", timeout=TIMEOUT)
    bob = open_user(browser, contexts, live_server, "bob", register=False)
    expect(bob.get_by_test_id("unread-alice")).to_have_text("3", timeout=TIMEOUT)
    for i in range(3):
        expect(items(a_chat).nth(i).get_by_test_id("receipt")).to_have_text("delivered", timeout=TIMEOUT)
    b_chat = open_chat(bob, "alice")
    expect(items(b_chat)).to_have_count(3, timeout=TIMEOUT)
    for i in range(3):
        expect(items(b_chat).nth(i)).to_contain_text(f"while you were away {i}")
    expect(items(a_chat).nth(2).get_by_test_id("receipt")).to_have_text("read", timeout=TIMEOUT)
    expect(bob.get_by_test_id("unread-alice")).to_be_hidden()
    # a reload brings the same history back, once
    bob.reload()
    b_chat = open_chat(bob, "alice")
    expect(items(b_chat)).to_have_count(3, timeout=TIMEOUT)
    time.sleep(0.5)   # a negative: no duplicate arrives meanwhile ("once")
    expect(items(b_chat)).to_have_count(3)

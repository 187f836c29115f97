"""A caller whose browser refuses the microphone sees a clear message, and no call is placed."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from playwright.sync_api import Browser, BrowserContext, expect, sync_playwright

from ..conftest import LiveServer
from .conftest import ARGS, CHROMIUM, add_contact, open_user

pytestmark = pytest.mark.browser


@pytest.fixture(scope="module")
def strict_browser() -> Iterator[Browser]:
    # No fake UI: with no permission granted, getUserMedia is refused.
    args = [a for a in ARGS if a != "--use-fake-ui-for-media-stream"]
    with sync_playwright() as pw:
        b = pw.chromium.launch(executable_path=CHROMIUM, headless=True, args=args)
        yield b
        b.close()


def test_media_permission_denied(strict_browser: Browser, live_server: LiveServer) -> None:
    contexts: list[BrowserContext] = []
    try:
        bob = open_user(strict_browser, contexts, live_server, "bob")
        alice_ctx = strict_browser.new_context(permissions=[])
        contexts.append(alice_ctx)
        alice = alice_ctx.new_page()
        alice.goto(live_server.url + "/")
        alice.get_by_test_id("login-username").fill("alice")
        alice.get_by_test_id("login-password").fill("correct-horse-9")
        alice.get_by_test_id("register-submit").click()
        expect(alice.get_by_test_id("connection")).to_have_text("online", timeout=10_000)
        add_contact(alice, "bob")
        alice.get_by_test_id("contact-bob").click()
        alice.get_by_test_id("call-audio").click()
        expect(alice.get_by_test_id("call-state")).to_have_text("ended", timeout=10_000)
        reason = alice.get_by_test_id("call-end-reason")
        expect(reason).to_have_attribute("data-reason", "media_denied")
        expect(reason).to_contain_text("permission denied")
        expect(bob.get_by_test_id("call-state")).to_have_text("idle")  # no invite went out
    finally:
        for c in contexts:
            c.close()

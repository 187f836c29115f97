"""Real headless Chromium (Debian's /usr/bin/chromium) driven by Playwright, with fake media.

Run these inside a network namespace where loopback is the only interface (scripts/test does
that as root); Chromium is told to use loopback for WebRTC.
"""

from __future__ import annotations

import shutil
from collections.abc import Iterator
from pathlib import Path

import pytest
from playwright.sync_api import Browser, BrowserContext, Page, ViewportSize, expect, sync_playwright

from ..conftest import PASSWORD, LiveServer

DESKTOP: ViewportSize = {"width": 1280, "height": 800}
PHONE: ViewportSize = {"width": 390, "height": 844}
CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"
ARGS = [
    "--use-fake-device-for-media-stream",
    "--use-fake-ui-for-media-stream",
    "--allow-loopback-in-peer-connection",
    "--disable-features=WebRtcHideLocalIpsWithMdns",
    "--autoplay-policy=no-user-gesture-required",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]


@pytest.fixture(scope="module")
def browser() -> Iterator[Browser]:
    assert Path(CHROMIUM).exists(), "Debian chromium is missing: scripts/test installs it"
    with sync_playwright() as pw:
        b = pw.chromium.launch(executable_path=CHROMIUM, headless=True, args=ARGS)
        yield b
        b.close()


@pytest.fixture
def contexts(browser: Browser) -> Iterator[list[BrowserContext]]:
    made: list[BrowserContext] = []
    yield made
    for c in made:
        c.close()


def open_user(browser: Browser, contexts: list[BrowserContext], server: LiveServer, name: str,
              password: str = "correct-horse-9", register: bool = True) -> Page:
    """A fresh browser context (its own storage), signed up or logged in as `name`."""
    ctx = browser.new_context(permissions=["microphone", "camera"])
    contexts.append(ctx)
    page = ctx.new_page()
    page.goto(server.url + "/")
    page.get_by_test_id("login-username").fill(name)
    page.get_by_test_id("login-password").fill(password)
    page.get_by_test_id("register-submit" if register else "login-submit").click()
    expect(page.get_by_test_id("connection")).to_have_text("online", timeout=10_000)
    return page


def add_contact(page: Page, name: str, presence: str = "online") -> None:
    page.get_by_test_id("contact-add-input").fill(name)
    page.get_by_test_id("contact-add-submit").click()
    expect(page.get_by_test_id(f"presence-{name}")).to_have_text(presence.replace("_", " "), timeout=10_000)


def open_as(browser: Browser, contexts: list[BrowserContext], server: LiveServer, name: str, *,
            viewport: ViewportSize = DESKTOP, locale: str = "en-US", register: bool = True,
            display_name: str | None = None, init_script: str | None = None) -> Page:
    """A fresh context (its own storage) signed up or in as `name`, waiting until online."""
    ctx = browser.new_context(permissions=["microphone", "camera"], viewport=viewport, locale=locale)
    contexts.append(ctx)
    if init_script:
        ctx.add_init_script(init_script)
    page = ctx.new_page()
    errors: list[str] = []
    page.on("pageerror", lambda exc: errors.append(str(exc)))
    page.goto(server.url + "/")
    page.get_by_test_id("login-username").fill(name)
    page.get_by_test_id("login-password").fill(PASSWORD)
    if display_name:
        page.get_by_test_id("login-display-name").fill(display_name)
    page.get_by_test_id("register-submit" if register else "login-submit").click()
    expect(page.get_by_test_id("connection")).to_have_attribute("data-state", "online", timeout=10_000)
    page.errors = errors  # type: ignore[attr-defined]
    return page

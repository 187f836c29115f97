"""Chromium calls a `jego dial answer` dialer with every candidate forced through a real coturn
(`use-auth-secret`, tests/servers.py): the server hands both its users' own TURN credentials
and `ice_transport_policy: "relay"`; the dialer's recording holds the browser's tone.
"""

from __future__ import annotations

import re
import time
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
from playwright.sync_api import Browser, BrowserContext, expect

from jego_call.media.analysis import active_duration, dominant_frequency, level_dbfs, read_wav

from ..conftest import LiveServer, make_user
from ..integration.test_dial import Answerer
from ..integration.test_turn import relayed_bytes
from ..servers import TurnServer, coturn_server
from .conftest import add_contact, open_user
from .test_browser_to_dialer import TONE_HZ, tone_browser

pytestmark = pytest.mark.browser
__all__ = ["tone_browser"]

SECRET = "e2e-turn-secret"


@pytest.fixture
def turn(tmp_path: Path) -> Iterator[TurnServer]:
    with coturn_server(tmp_path, secret=SECRET, verbose=True) as t:
        yield t


def test_browser_to_dialer_through_the_turn_relay(tone_browser: Browser, turn: TurnServer, server_factory: object,
                                                   tmp_path: Path) -> None:
    server: LiveServer = server_factory(  # type: ignore[operator]
        JEGO_ICE_TURN_URLS=f'["{turn.url}"]', JEGO_ICE_TURN_SECRET=SECRET, JEGO_ICE_TRANSPORT_POLICY="relay")
    contexts: list[BrowserContext] = []
    make_user(server, "bob")
    rec = tmp_path / "bob.wav"
    bob = Answerer(server, "bob", ["--record", str(rec), "--count", "1"], tmp_path)  # waits until online
    try:
        alice = open_user(tone_browser, contexts, server, "alice")
        add_contact(alice, "bob", "online")
        alice.get_by_test_id("contact-bob").click()
        alice.get_by_test_id("call-audio").click()
        expect(alice.get_by_test_id("call-state")).to_have_text("connected", timeout=30_000)
        time.sleep(5.0)  # the call's length in real time is the subject: >= 3 s of tone is judged below
        alice.get_by_test_id("hangup").click()
        expect(alice.get_by_test_id("call-state")).to_have_text("ended", timeout=10_000)
        assert bob.wait(30) == 0, bob.err_path.read_text()
    finally:
        bob.stop()
        for c in contexts:
            c.close()
    (verdict,) = bob.results()
    assert verdict["outcome"] == "answered"
    samples, rate = read_wav(rec)
    # Judge where the tone is (relay set-up may take a while under load): the half-seconds with sound.
    half = rate // 2
    chunks = [samples[i:i + half] for i in range(0, len(samples) - half + 1, half)]
    sound = [c for c in chunks if level_dbfs(c) > -40.0]
    assert len(sound) >= 6, f"only {len(sound) / 2} s of sound"
    body = np.concatenate(sound[1:-1])
    assert abs(dominant_frequency(body, rate) - TONE_HZ) <= 10.0
    assert level_dbfs(body) > -30.0, "the tone arrived far too quietly"
    assert active_duration(samples, rate) >= 3.0
    # both ends allocated on coturn with their own ephemeral usernames, and the media went through it
    log = (turn.server.log.parent / "turnserver.log").read_text(errors="replace")
    for user in ("alice", "bob"):
        assert re.search(rf"user <\d+:{user}>: incoming packet ALLOCATE processed, success", log), log[-3000:]
    assert relayed_bytes(turn, "alice", 10_000) >= 10_000 and relayed_bytes(turn, "bob", 10_000) >= 10_000, log[-3000:]

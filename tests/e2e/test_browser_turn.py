"""Calls with every candidate forced through a real coturn (`use-auth-secret`, tests/servers.py):
the server hands each user their own TURN credentials and `ice_transport_policy: "relay"`.

- Chromium calls a `jego dial answer` dialer; the dialer's recording holds the browser's tone.
- Chromium calls Chromium in the web app, each with its own tone as the microphone: each page
  records what it plays of the other (WebAudio, the remote stream's PCM) and hears the other's
  tone, not its own; getStats names a relay-to-relay candidate pair on both, and coturn counts
  the bytes it relayed for each user.
"""

from __future__ import annotations

import base64
import functools
import re
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from playwright.sync_api import Browser, BrowserContext, Page, expect

from jego_call.media.analysis import active_duration, dominant_frequency, level_dbfs, read_wav
from tests.helpers import wait_for

from ..conftest import LiveServer, ServerFactory, make_user
from ..integration.test_dial import Answerer
from ..integration.test_turn import relayed_bytes
from ..servers import TurnServer, coturn_server
from .conftest import ARGS, CHROMIUM, add_contact, open_user
from .test_browser_to_dialer import TONE_HZ, tone_browser, write_tone

pytestmark = pytest.mark.browser
__all__ = ["tone_browser"]

SECRET = "e2e-turn-secret"


BOB_HZ = 440.0   # bob's microphone; alice's is tone_browser's TONE_HZ (660 Hz)


@pytest.fixture
def turn(tmp_path: Path) -> Iterator[TurnServer]:
    with coturn_server(tmp_path, secret=SECRET, verbose=True) as t:
        yield t


@pytest.fixture(scope="module")
def bob_browser(tone_browser: Browser, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Browser]:
    """A second Chromium (from tone_browser's Playwright: one per thread) whose fake microphone plays BOB_HZ."""
    wav = tmp_path_factory.mktemp("fake-mic-bob") / "tone.wav"
    write_tone(wav, BOB_HZ)
    b = tone_browser.browser_type.launch(executable_path=CHROMIUM, headless=True,
                                         args=[*ARGS, f"--use-file-for-fake-audio-capture={wav}"])
    yield b
    b.close()


def relay_server(server_factory: ServerFactory, turn: TurnServer) -> LiveServer:
    return server_factory(JEGO_ICE_TURN_URLS=f'["{turn.url}"]', JEGO_ICE_TURN_SECRET=SECRET,
                          JEGO_ICE_TRANSPORT_POLICY="relay")


def test_browser_to_dialer_through_the_turn_relay(tone_browser: Browser, turn: TurnServer, server_factory: ServerFactory,
                                                   tmp_path: Path) -> None:
    server = relay_server(server_factory, turn)
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


# Start recording `seconds` of what the page plays from the other end (the remote stream of
# <audio id=remote-audio>) as 16-bit PCM; `window.__recording` resolves to {rate, pcm: base64}.
START_RECORDING = """(seconds) => {
  const stream = document.getElementById("remote-audio").srcObject;
  if (!stream || stream.getAudioTracks().length === 0) return false;
  window.__recording = (async () => {
    const ctx = new AudioContext();
    await ctx.resume();
    const src = ctx.createMediaStreamSource(stream);
    const tap = ctx.createScriptProcessor(4096, 1, 1);
    const silent = ctx.createGain();
    silent.gain.value = 0;  // the tap must reach the destination to run; nothing is heard twice
    const chunks = [];
    tap.onaudioprocess = (e) => chunks.push(new Float32Array(e.inputBuffer.getChannelData(0)));
    src.connect(tap); tap.connect(silent); silent.connect(ctx.destination);
    await new Promise((r) => setTimeout(r, seconds * 1000));  // real time is the subject: N s of audio
    src.disconnect(); tap.disconnect();
    const n = chunks.reduce((a, c) => a + c.length, 0);
    const pcm = new Int16Array(n);
    let i = 0;
    for (const c of chunks) for (const v of c) pcm[i++] = Math.max(-32768, Math.min(32767, Math.round(v * 32767)));
    const bytes = new Uint8Array(pcm.buffer);
    let bin = "";
    for (let k = 0; k < bytes.length; k += 0x8000) bin += String.fromCharCode(...bytes.subarray(k, k + 0x8000));
    const rate = ctx.sampleRate;
    await ctx.close();
    return { rate, pcm: btoa(bin) };
  })();
  return true;
}"""

# The selected candidate pair of the live call (RTCTransportStats.selectedCandidatePairId) and
# the type of every local candidate gathered.
SELECTED_PAIR = """async () => {
  const pc = window.jego.call && window.jego.call.pc;
  if (!pc) return null;
  const report = await pc.getStats();
  let pair = null;
  const local = [];
  report.forEach((s) => {
    if (s.type === "transport" && s.selectedCandidatePairId) pair = report.get(s.selectedCandidatePairId);
    if (s.type === "local-candidate") local.push(s.candidateType);
  });
  if (!pair || pair.state !== "succeeded") return null;
  return {
    local: report.get(pair.localCandidateId).candidateType,
    remote: report.get(pair.remoteCandidateId).candidateType,
    bytesSent: pair.bytesSent, bytesReceived: pair.bytesReceived, gathered: local,
  };
}"""


def band_db(x: np.ndarray[Any, np.dtype[np.float64]], rate: int, hz: float, width: float = 15.0) -> float:
    """Power in dB (relative) of `x` within hz ± width (Hann-windowed FFT): one tone's share."""
    spec = np.abs(np.fft.rfft(x * np.hanning(len(x)))) ** 2
    freqs = np.fft.rfftfreq(len(x), 1 / rate)
    return float(10 * np.log10(spec[(freqs >= hz - width) & (freqs <= hz + width)].sum() + 1e-12))


def selected_pair(page: Page) -> dict[str, Any] | None:
    """SELECTED_PAIR once it has received more than 5 kB (media flows over it), else None."""
    pair: dict[str, Any] | None = page.evaluate(SELECTED_PAIR)
    return pair if pair and pair["bytesReceived"] > 5000 else None


def recorded(page: Page) -> tuple[np.ndarray[Any, np.dtype[np.float64]], int]:
    got: dict[str, Any] = page.evaluate("window.__recording")
    pcm = np.frombuffer(base64.b64decode(got["pcm"]), dtype="<i2").astype(np.float64) / 32768.0
    return pcm, int(got["rate"])


def test_browser_to_browser_through_the_turn_relay(tone_browser: Browser, bob_browser: Browser, turn: TurnServer,
                                                   server_factory: ServerFactory) -> None:
    server = relay_server(server_factory, turn)
    contexts: list[BrowserContext] = []
    try:
        alice = open_user(tone_browser, contexts, server, "alice")
        bob = open_user(bob_browser, contexts, server, "bob")
        add_contact(alice, "bob", "online")
        add_contact(bob, "alice", "online")
        alice.get_by_test_id("contact-bob").click()
        alice.get_by_test_id("call-audio").click()
        expect(bob.get_by_test_id("call-state")).to_have_text("incoming", timeout=20_000)
        bob.get_by_test_id("answer").click()
        for page in (alice, bob):
            expect(page.get_by_test_id("call-state")).to_have_text("connected", timeout=30_000)
        # both ends chose a relay-to-relay pair (they gathered nothing else) and media crosses it
        pairs = {name: wait_for(functools.partial(selected_pair, page), 30, f"{name}'s selected pair to carry media",
                                interval=0.25)
                 for name, page in (("alice", alice), ("bob", bob))}
        for name, pair in pairs.items():
            assert pair["local"] == "relay" and pair["remote"] == "relay", (name, pair)
            assert set(pair["gathered"]) == {"relay"}, (name, pair)
        for page in (alice, bob):
            assert page.evaluate(START_RECORDING, 3), "no remote stream on the page"
        heard = {"alice": recorded(alice), "bob": recorded(bob)}
        alice.get_by_test_id("hangup").click()
        for page in (alice, bob):
            expect(page.get_by_test_id("call-state")).to_have_text("ended", timeout=10_000)
    finally:
        for c in contexts:
            c.close()
    # each page plays the other's tone (crossed Chromium's Opus, SRTP and coturn twice), not its own
    for name, (other_hz, own_hz) in {"alice": (BOB_HZ, TONE_HZ), "bob": (TONE_HZ, BOB_HZ)}.items():
        x, rate = heard[name]
        assert len(x) >= 2.5 * rate, (name, len(x) / rate)
        body = x[len(x) // 6:]  # past the first half-second (the tap's start)
        assert abs(dominant_frequency(body, rate) - other_hz) <= 10.0, name
        # the -13 dBFS (RMS) tone arrives at about -28.5 dBFS past Chromium's capture processing
        assert level_dbfs(body) > -40.0, f"{name} heard the tone far too quietly"
        assert active_duration(body, rate) >= 2.0, name
        assert band_db(body, rate, own_hz) < band_db(body, rate, other_hz) - 30.0, name
    # coturn allocated for both with their own ephemeral usernames, and relayed their media
    log = (turn.server.log.parent / "turnserver.log").read_text(errors="replace")
    for user in ("alice", "bob"):
        assert re.search(rf"user <\d+:{user}>: incoming packet ALLOCATE processed, success", log), log[-3000:]
        assert relayed_bytes(turn, user, 10_000) >= 10_000, log[-3000:]

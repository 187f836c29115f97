"""baresip as the phone side: the bridge in trunk mode (`bridge.register = false`, no REGISTER,
IP-authenticated) sends its INVITE straight to a baresip user agent that auto-answers, plays a
1 kHz WAV and dumps what it hears (sndfile). This proves the bridge talks SIP/RTP with a
third-party peer, not only with our own carrier simulator.
"""

from __future__ import annotations

import shutil
import subprocess
import wave
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest

from jego_call.media import analysis
from tests.conftest import LiveServer, make_user, start_server, top_up
from tests.helpers import wait_for, wav_frames

from .bridge_util import free_port, segment, tone_ok, wait_for_log
from .test_dial import dial

BARESIP = shutil.which("baresip")
NUMBER = "+8613800138000"

pytestmark = pytest.mark.skipif(BARESIP is None, reason="baresip is not installed")


def write_tone(path: Path, freq: float, seconds: float = 30.0, rate: int = 8000) -> None:
    t = np.arange(int(seconds * rate)) / rate
    pcm = np.round(10 ** (-10 / 20) * 32767 * np.sin(2 * np.pi * freq * t)).astype("<i2")
    with wave.open(str(path), "wb") as w:
        w.setnchannels(1)
        w.setsampwidth(2)
        w.setframerate(rate)
        w.writeframes(pcm.tobytes())


@pytest.fixture
def baresip(tmp_path: Path) -> Iterator[tuple[int, Path]]:
    """A baresip UA on 127.0.0.1 answering `NUMBER` automatically; yields (SIP port, its dir)."""
    conf = tmp_path / "baresip"
    conf.mkdir()
    port, rtp = free_port(), free_port()
    write_tone(conf / "tone.wav", 1000.0)
    (conf / "config").write_text(f"""poll_method poll
sip_listen 127.0.0.1:{port}
sip_trans_def udp
net_interface 127.0.0.1
audio_source aufile,{conf / 'tone.wav'}
audio_player aufile,{conf / 'unused.wav'}
audio_alert aufile,/dev/null
audio_srate 8000
audio_channels 1
rtp_ports {rtp}-{rtp + 20}
module_path /usr/lib/baresip/modules
module g711.so
module aufile.so
module sndfile.so
module_app account.so
snd_path {conf}
""")
    (conf / "accounts").write_text(f"<sip:{NUMBER}@127.0.0.1>;regint=0;answermode=auto;audio_codecs=PCMU,PCMA\n")
    log = open(conf / "baresip.log", "w")  # noqa: SIM115 - owned by the process
    proc = subprocess.Popen([str(BARESIP), "-f", str(conf)], stdout=log, stderr=subprocess.STDOUT)
    def ready() -> bool:
        assert proc.poll() is None, (conf / "baresip.log").read_text()
        return "baresip is ready" in (conf / "baresip.log").read_text()

    wait_for(ready, 10, "baresip to be ready")
    yield port, conf
    proc.terminate()
    proc.wait(10)


@pytest.fixture
def server(tmp_path: Path, baresip: tuple[int, Path]) -> Iterator[LiveServer]:
    port, _ = baresip
    s = start_server(tmp_path, ["--no-carrier"], JEGO_BRIDGE_TRUNK_PORT=str(port), JEGO_BRIDGE_REGISTER="false")
    make_user(s, "alice")
    top_up(s, "alice")
    wait_for_log(s, "connected to http", 20)
    yield s
    s.stop()


def test_trunk_mode_call_to_baresip_tones_both_ways(server: LiveServer, baresip: tuple[int, Path],
                                                    tmp_path: Path) -> None:
    _, conf = baresip
    rec = tmp_path / "heard.wav"
    rc, res, err = dial(server, NUMBER, "--play", "tone:700:-10", "--record", str(rec), "--json", "--duration", "4")
    assert rc == 0 and res is not None and res["outcome"] == "answered", err
    assert "REGISTER" not in (conf / "baresip.log").read_text()
    expected = analysis.sine_rms_dbfs(-10.0)
    got, rate = analysis.read_wav(rec)
    ok, hz, lvl = tone_ok(segment(got, rate, 0.5, 3.5), rate, 1000.0, expected)
    assert ok, ("app heard", hz, lvl)
    # baresip closes its dump when the BYE arrives: its header then holds the call's length
    wait_for(lambda: any(wav_frames(p) >= 3.5 * 8000 for p in conf.glob("dump-*-dec.wav")), 10,
             "baresip's playout dump")
    [dump] = sorted(conf.glob("dump-*-dec.wav"))
    heard, rate = analysis.read_wav(dump)
    ok, hz, lvl = tone_ok(segment(heard, rate, 1.0, 3.5), rate, 700.0, expected)
    assert ok, ("baresip heard", hz, lvl)
    assert "terminated" in (conf / "baresip.log").read_text()  # our BYE ended it

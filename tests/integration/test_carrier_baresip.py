"""baresip 1.0 (a real softphone) registers with digest auth, calls +8613800138000 and records
what it hears: the Chinese ringback (450 Hz) as early media, then the echo of its own 600 Hz tone.
Judged by the frequency and level of baresip's decoded-audio dump and the carrier's recording."""

from __future__ import annotations

import asyncio
import contextlib
import shutil
import signal
import wave
from pathlib import Path

import numpy as np
import pytest

from bridge.carrier.media import load_wav, measure_tone
from tests.helpers import until, wav_frames

from .carrier_util import HOST, PASSWORD, USER, free_port, running_carrier, wait_records

BARESIP = shutil.which("baresip")
MODULES = Path("/usr/lib/baresip/modules")
NEEDED = ("g711.so", "aufile.so", "aubridge.so", "sndfile.so", "account.so", "menu.so")

pytestmark = [
    pytest.mark.skipif(BARESIP is None or not all((MODULES / m).exists() for m in NEEDED),
                       reason=f"baresip with modules {', '.join(NEEDED)} is not installed"),
    pytest.mark.timeout(60),
]


def tone_wav(path: Path, freq: float, seconds: float) -> None:
    t = np.arange(int(8000 * seconds)) / 8000
    pcm = (0.3 * 32767 * np.sin(2 * np.pi * freq * t)).astype("<i2")  # about -10.5 dBFS
    with wave.open(str(path), "wb") as w:
        w.setnchannels(1)
        w.setsampwidth(2)
        w.setframerate(8000)
        w.writeframes(pcm.tobytes())


def baresip_config(conf: Path, snd: Path, tone: Path, carrier_port: int) -> None:
    conf.mkdir(parents=True)
    snd.mkdir(parents=True)
    rtp = free_port(2)
    (conf / "config").write_text(f"""\
poll_method     epoll
sip_listen      {HOST}:{free_port()}
net_interface   {HOST}
audio_source    aufile,{tone}
audio_player    aubridge,nowhere
audio_alert     aubridge,nowhere
ausrc_srate     8000
auplay_srate    8000
ausrc_channels  1
auplay_channels 1
rtp_ports       {rtp}-{rtp + 40}
module_path     {MODULES}
module          g711.so
module          aufile.so
module          aubridge.so
module          sndfile.so
module_app      account.so
module_app      menu.so
snd_path        {snd}
""")
    (conf / "accounts").write_text(
        f"<sip:{USER}@{HOST}:{carrier_port};transport=udp>;auth_pass={PASSWORD};regint=300;audio_codecs=PCMU\n")


async def test_baresip_registers_calls_and_hears_its_echo(tmp_path: Path) -> None:
    tone = tmp_path / "tone.wav"
    tone_wav(tone, 600.0, 4.0)
    conf, snd = tmp_path / "baresip", tmp_path / "snd"
    async with running_carrier(tmp_path / "data") as carrier:
        baresip_config(conf, snd, tone, carrier.udp_port)
        assert BARESIP is not None
        proc = await asyncio.create_subprocess_exec(
            BARESIP, "-f", str(conf), "-n", HOST, "-t", "30",
            "-e", f"/dial sip:+8613800138000@{HOST}:{carrier.udp_port}",
            stdin=asyncio.subprocess.DEVNULL, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.STDOUT)
        try:
            registered = False

            def registered_and_answered() -> bool:
                nonlocal registered
                registered = registered or bool(carrier.status()["registrations"])
                return registered and bool(carrier.stats["answered"])
            with contextlib.suppress(AssertionError):   # judged below, with baresip's log
                await until(registered_and_answered, 5, "baresip registered and answered")
            # baresip hangs up when its file source ends (about 4 s after the answer).
            [rec] = await wait_records(carrier, 1, timeout=20)
            with contextlib.suppress(AssertionError):   # baresip closes its dump: judged below, with its log
                await until(lambda: any(wav_frames(p) > 3 * 8000 for p in snd.glob("dump-*-dec.wav")), 5,
                            "baresip's playout dump")
        finally:
            with contextlib.suppress(ProcessLookupError):
                proc.send_signal(signal.SIGTERM)
            out, _ = await asyncio.wait_for(proc.communicate(), 10)
    log = out.decode(errors="replace")
    assert registered, log
    assert carrier.stats["challenges"] >= 2  # REGISTER (401) and INVITE (407)
    assert (rec.to, rec.sip_code, rec.outcome, rec.codec) == ("+8613800138000", 200, "hangup", "PCMU")
    # answer -> BYE: about the 4 s tone (baresip hangs up when its file ends; 3.000 s was seen
    # on a loaded CI run)
    assert 2.5 <= rec.duration_s < 6.0, rec

    [dec] = list(snd.glob("dump-*-dec.wav"))  # what baresip played out: ringback, then the echo
    heard, rate = load_wav(dec)
    assert rate == 8000 and len(heard) > 3 * 8000, log
    f, level = measure_tone(heard[800:4000])  # inside the first 1 s ringback burst (183 early media)
    assert abs(f - 450) < 5 and -13 < level < -7
    f, level = measure_tone(heard[-2 * 8000:-4000])
    assert abs(f - 600) < 5 and -14 < level < -7
    assert rec.recording is not None
    carrier_heard, _ = load_wav(rec.recording)
    f, level = measure_tone(carrier_heard[8000:24000])
    assert abs(f - 600) < 5 and -14 < level < -7

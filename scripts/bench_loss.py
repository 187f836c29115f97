#!/usr/bin/env python3
"""Benchmark: the lean leg's receive path under loss and delay, in virtual time (issue 15).

1. App -> phone speech (tests/data/speech_en_48k.wav at 8 kHz) through Opus at 8 kHz
   (bridge/net/opus.py, 32 kb/s complexity 1) from one RtpSession to another, a seeded
   jego_call/media/impair.py network between them, then through G.711 as the carrier hears it;
   narrowband PESQ against the source, with the sender's in-band FEC on (planned for 10 % loss)
   and off (PLC only), with and without RFC 2198 RED (3 frames deep as our senders send it
   while the far end reports 3 % loss or more, 2 on a calmer path, 1 as Chromium does by
   default), on the SAME loss pattern, plus the FEC / RED recovered and
   concealed frame counters. G.711 alone on the same speech is the clean reference. ``--tts``
   adds five synthesized voices (flite slt, rms, awb; espeak-ng Mandarin and US English) so the
   figures are not one sample's.
2. The adaptive playout delay (bridge.rtp.session.JitterBuffer adaptive=True) after a stall of
   S ms whose packets then arrive together: the delay before, at its peak, and how long until it
   is back within 60 ms of its floor; the fixed buffer for comparison.

Deterministic (seeded), no sockets: run it anywhere.

    .venv/bin/python scripts/bench_loss.py --seeds 1 2 3 --stall-ms 300 --tts
"""

from __future__ import annotations

import argparse
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from bridge.net.opus import OpusCodec  # noqa: E402
from bridge.rtp import g711  # noqa: E402
from bridge.rtp.media import MediaFormat  # noqa: E402
from bridge.rtp.session import APP_LEG_FLOOR  # noqa: E402
from jego_call.media import analysis  # noqa: E402
from tests.lossy_path import ADDR, run_path  # noqa: E402
from tests.unit.test_adaptive_jitter import run as jitter_run  # noqa: E402
from tests.unit.test_adaptive_jitter import stall  # noqa: E402

SPEECH = ROOT / "tests" / "data" / "speech_en_48k.wav"



def through(speech: np.ndarray, spec: str, fec: bool, red: int = 0) -> tuple[float, int, int, int, int]:
    fmt = MediaFormat(codec="opus", payload_type=111, telephone_event_pt=None, remote=ADDR,
                      red_pt=63 if red else None, red_distance=red)
    tx_codec, rx_codec = OpusCodec(32000, 1), OpusCodec(32000, 1)
    if fec:
        tx_codec.enable_fec(10)
    heard, rx, net = run_path(speech, fmt, tx_codec, rx_codec, spec, jitter_adaptive=True,
                              jitter_prefetch=APP_LEG_FLOOR, jitter_speech=True)
    phone = g711.decoder_for("PCMU")(g711.encoder_for("PCMU")(heard))  # what the carrier records
    score = analysis.pesq_score(analysis.to_float(speech), analysis.to_float(phone), 8000, mode="nb")
    p = rx.playout
    return score, p.recovered_frames, p.concealed_frames, net.counters.dropped, p.red_recovered_frames


TTS_TEXT_EN = ("The birch canoe slid on the smooth planks. Glue the sheet to the dark blue background. "
               "It is easy to tell the depth of a well. These days a chicken leg is a rare dish. "
               "Rice is often served in round bowls. The juice of lemons makes fine punch.")
TTS_TEXT_ZH = ("你好，我是你妈妈。今天天气很好，我们去公园散步吧。你在国外工作辛苦吗？"
               "记得按时吃饭，早点休息。下个月你回家吗？我们都很想你。")


def synthesize(folder: Path) -> list[Path]:
    """Other voices than the repo's sample: flite (slt, rms, awb) and espeak-ng (Mandarin, US
    English), both installed by scripts/setup.sh. Deterministic for a given package version."""
    jobs = [(f"flite_{v}", ["flite", "-voice", v, "-t", TTS_TEXT_EN, "-o"]) for v in ("slt", "rms", "awb")]
    jobs += [("espeak_cmn", ["espeak-ng", "-v", "cmn", "-s", "150", "-w"]),
             ("espeak_en", ["espeak-ng", "-v", "en-us", "-s", "150", "-w"])]
    out = []
    for name, cmd in jobs:
        path = folder / f"{name}.wav"
        argv = [*cmd, str(path)] + ([TTS_TEXT_ZH if "cmn" in name else TTS_TEXT_EN] if cmd[0] == "espeak-ng" else [])
        subprocess.run(argv, check=True, capture_output=True)
        out.append(path)
    return out


def load(path: Path) -> np.ndarray:
    x, rate = analysis.read_wav(path)
    return np.asarray(np.clip(analysis.resample(x, rate, 8000) * 32768, -32768, 32767), dtype=np.int16)


MODES = (("on + RED 3 (ours when lossy)", True, 3), ("on + RED 2", True, 2), ("on + RED 1 (Chromium's default)", True, 1), ("RED 2, no FEC", False, 2),
         ("on", True, 0), ("off (PLC only)", False, 0))


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--seeds", type=int, nargs="+", default=[1, 2, 3])
    ap.add_argument("--stall-ms", type=float, default=300.0)
    ap.add_argument("--speech", type=Path, nargs="*", default=[SPEECH], help="8 kHz-able speech WAVs")
    ap.add_argument("--tts", action="store_true", help="also five synthesized voices (flite, espeak-ng)")
    args = ap.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        files = list(args.speech) + (synthesize(Path(tmp)) if args.tts else [])
        samples = [(f.stem, load(f)) for f in files]
    for name, speech in samples:
        base = analysis.pesq_score(analysis.to_float(speech),
                                   analysis.to_float(g711.decoder_for("PCMU")(g711.encoder_for("PCMU")(speech))),
                                   8000, mode="nb")
        print(f"\n{name} ({len(speech) / 8000:.1f} s): G.711 alone PESQ nb {base:.2f}")
        print("| network | FEC / RED | PESQ nb median (min..max over seeds) | FEC / RED recovered / concealed "
              "frames | datagrams lost |")
        print("|---|---|---|---|---|")
        for spec in ("", "loss=5", "loss=10,burst=2.5"):
            for label, fec, red in MODES:
                rows = [through(speech, f"{spec},seed={s}" if spec else "", fec, red)
                        for s in (args.seeds if spec else [0])]
                scores = [r[0] for r in rows]
                print(f"| {spec or 'clean'} | {label} | {statistics.median(scores):.2f} "
                      f"({min(scores):.2f}..{max(scores):.2f}) | {sum(r[1] for r in rows)} / {sum(r[4] for r in rows)}"
                      f" / {sum(r[2] for r in rows)} | {sum(r[3] for r in rows)} |")
    print()
    print(f"Playout delay after a {args.stall_ms:.0f} ms stall (packets held, then delivered together):")
    print("| buffer | floor ms | peak ms | back within 60 ms of the floor after (s) | at +2 s ms |")
    print("|---|---|---|---|---|")
    s = args.stall_ms / 1000
    for adaptive in (True, False):
        delays, _ = jitter_run(adaptive, stall(s), prefetch=APP_LEG_FLOOR)
        floor = statistics.median(d for t, d in delays if 2.0 <= t < 2.8)
        after = [(t, d) for t, d in delays if t >= 3.0 + s]
        peak = max(d for _, d in after)
        back = next((t - (3.0 + s) for t, d in after if d <= floor + 0.060
                     and all(d2 <= floor + 0.060 for t2, d2 in after if t2 >= t)), None)
        at2 = statistics.median(d for t, d in after if 3.0 + s + 2.0 <= t < 3.0 + s + 2.2)
        print(f"| {'adaptive' if adaptive else 'fixed'} | {floor * 1000:.0f} | {peak * 1000:.0f} | "
              f"{'never' if back is None else f'{back:.2f}'} | {at2 * 1000:.0f} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())

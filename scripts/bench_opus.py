#!/usr/bin/env python3
"""Benchmark: Opus at 8 kHz through libopus (bridge/net/opus.py), complexity and bitrate against
CPU and PESQ, to choose the lean WebRTC leg's encoder settings.

The phone -> app direction of a bridged call: the carrier's speech as G.711 decodes it
(tests/data/speech_en_48k.wav at 8 kHz, through mu-law), encoded by our Opus encoder from 8 kHz
input, decoded again (at 8 kHz, as a narrowband PESQ sees it). Reported per complexity and
bitrate: encode and decode CPU per 20 ms frame (median of --runs passes, in this process), bytes
per packet, and narrowband PESQ against the 8 kHz source, next to G.711 alone.

    .venv/bin/python scripts/bench_opus.py [--complexity 0 1 3 5 7 9 10] [--bitrate 12000 16000 24000 32000]
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from bridge.net import opus  # noqa: E402
from bridge.rtp import g711  # noqa: E402
from jego_call.media import analysis  # noqa: E402

SPEECH = ROOT / "tests" / "data" / "speech_en_48k.wav"


def speech_8k() -> np.ndarray:
    x, rate = analysis.read_wav(SPEECH)
    y = analysis.resample(x, rate, 8000)
    return np.clip(np.rint(y * 32767), -32768, 32767).astype(np.int16)


def frames(pcm: np.ndarray) -> list[np.ndarray]:
    n = len(pcm) // 160
    return [pcm[i * 160:(i + 1) * 160].copy() for i in range(n)]


def through(complexity: int, bitrate: int, src: list[np.ndarray], ref: np.ndarray, runs: int) -> dict[str, float]:
    enc_us, dec_us = [], []
    out: list[np.ndarray] = []
    sizes: list[int] = []
    for _ in range(runs):
        enc = opus.OpusEncoder(bitrate=bitrate, complexity=complexity)
        dec = opus.OpusDecoder()
        t0 = time.process_time()
        pkts = [enc.encode(f) for f in src]
        t1 = time.process_time()
        out = [dec.decode(p) for p in pkts]
        t2 = time.process_time()
        enc_us.append((t1 - t0) / len(src) * 1e6)
        dec_us.append((t2 - t1) / len(src) * 1e6)
        sizes = [len(p) for p in pkts]
        enc.close()
        dec.close()
    heard = np.concatenate(out).astype(np.float64) / 32767
    return {"encode_us": statistics.median(enc_us), "decode_us": statistics.median(dec_us),
            "bytes": float(np.mean(sizes)), "pesq": analysis.pesq_score(ref, heard, 8000, mode="nb")}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--complexity", type=int, nargs="+", default=[0, 1, 3, 5, 7, 9, 10])
    ap.add_argument("--bitrate", type=int, nargs="+", default=[12000, 16000, 20000, 24000, 32000])
    ap.add_argument("--runs", type=int, default=3)
    args = ap.parse_args()
    src_pcm = speech_8k()
    phone = g711.ulaw_decode(g711.ulaw_encode(src_pcm))  # what the carrier's G.711 delivers
    ref = src_pcm.astype(np.float64) / 32767
    g711_alone = analysis.pesq_score(ref, phone.astype(np.float64) / 32767, 8000, mode="nb")
    print(f"{opus.version()} ({opus.library_path()}); speech {len(src_pcm) / 8000:.1f} s")
    print(f"G.711 alone (mu-law): PESQ nb {g711_alone:.2f}")
    src = frames(phone)
    print("| complexity | bitrate | encode µs/frame | decode µs/frame | bytes/packet | PESQ nb (G.711 then Opus) |")
    print("|---|---|---|---|---|---|")
    for c in args.complexity:
        for b in args.bitrate:
            r = through(c, b, src, ref, args.runs)  # PESQ against the original source
            heard_ok = r["pesq"] >= g711_alone - 0.1
            print(f"| {c} | {b // 1000} kb/s | {r['encode_us']:.0f} | {r['decode_us']:.0f} | {r['bytes']:.0f} | "
                  f"{r['pesq']:.2f}{'' if heard_ok else ' (below G.711 - 0.1)'} |", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())

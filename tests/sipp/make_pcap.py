"""Write tests/sipp/speech_pcma_20ms.pcap: 5 s of tests/data/speech_en_48k.wav as G.711 A-law
RTP (PT 8) in 20 ms packets, for sipp's play_pcap_audio.

sipp's own /usr/share/sip-tester/g711a.pcap uses 30 ms packets although its SDP says ptime 20;
this file matches the ptime the scenarios offer. Run: .venv/bin/python tests/sipp/make_pcap.py
"""

from __future__ import annotations

import struct
from pathlib import Path

from bridge.carrier.media import load_wav
from bridge.rtp import g711

HERE = Path(__file__).resolve().parent
SRC = HERE.parent / "data" / "speech_en_48k.wav"
OUT = HERE / "speech_pcma_20ms.pcap"
SECONDS = 5.0


def ip_checksum(header: bytes) -> int:
    total = sum(struct.unpack("!10H", header))
    total = (total >> 16) + (total & 0xFFFF)
    total += total >> 16
    return int(~total & 0xFFFF)


def packet(payload: bytes, seq: int, ts: int) -> bytes:
    rtp = struct.pack("!BBHII", 0x80, 8, seq & 0xFFFF, ts & 0xFFFFFFFF, 0x4A45474F) + payload
    udp = struct.pack("!HHHH", 6000, 6000, 8 + len(rtp), 0) + rtp
    ip = bytearray(struct.pack("!BBHHHBBH4s4s", 0x45, 0, 20 + len(udp), seq & 0xFFFF, 0, 64, 17, 0,
                               bytes([127, 0, 0, 1]), bytes([127, 0, 0, 1])))
    ip[10:12] = struct.pack("!H", ip_checksum(bytes(ip)))
    eth = b"\x00" * 12 + b"\x08\x00"
    return eth + bytes(ip) + udp


def main() -> None:
    pcm, _ = load_wav(SRC, rate=8000)
    pcm = pcm[: int(SECONDS * 8000) // 160 * 160]
    encode = g711.encoder_for("PCMA")
    out = bytearray(struct.pack("<IHHiIII", 0xA1B2C3D4, 2, 4, 0, 0, 65535, 1))
    for i in range(len(pcm) // 160):
        frame = packet(encode(pcm[i * 160:(i + 1) * 160]), i, i * 160)
        usec = i * 20000
        out += struct.pack("<IIII", 1_700_000_000 + usec // 1_000_000, usec % 1_000_000, len(frame), len(frame))
        out += frame
    OUT.write_bytes(bytes(out))
    print(f"wrote {OUT} ({len(pcm) // 160} packets)")


if __name__ == "__main__":
    main()

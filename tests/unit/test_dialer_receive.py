"""The dialer's receive path without sockets (jego_call/media/receive.py): the loss buffer's order,
waiting and wrap, and the decoder's FEC / PLC fill, judged by the frames' timeline and content."""

from __future__ import annotations

import numpy as np
from aiortc.rtp import RtpPacket
from av import AudioFrame

from jego_call.media import analysis
from jego_call.media.libopus import OpusDecoder, library
from jego_call.media.receive import LossAwareOpusDecoder, LossBuffer, LossFrame, ReceiveCounters


def _pkt(n: int, payload: bytes = b"x") -> RtpPacket:
    p = RtpPacket(payload_type=96, sequence_number=n & 0xFFFF, timestamp=(n * 960) & 0xFFFFFFFF, ssrc=5)
    p.payload = payload
    return p


def test_the_buffer_releases_in_order_waits_for_a_hole_and_crosses_the_wrap() -> None:
    c = ReceiveCounters()
    jb = LossBuffer(c, window=2)
    out: list[tuple[int, int]] = []  # (seq offset from the first, lost before)
    for n in (65533, 65534, 65536, 65535, 65538, 65539, 65540):  # 65535 late by one; 65537 lost
        _, frame = jb.add(_pkt(n))
        if frame is not None:
            assert isinstance(frame, LossFrame)
            out += [((frame.timestamp + p.offset) // 960 - 65533, p.lost_before) for p in frame.parts]
    assert out == [(0, 0), (1, 0), (2, 0), (3, 0), (5, 1), (6, 0), (7, 0)]
    assert c.lost == 1 and c.late == 0
    jb.add(_pkt(65537))  # the lost one, too late now
    assert c.late == 1


def _speech_packets(fec: bool) -> list[bytes]:
    import ctypes

    lib = library()
    err = ctypes.c_int(0)
    st = lib.opus_encoder_create(48000, 1, 2048, ctypes.byref(err))
    for request, value in ((4002, 32000), (4012, 1 if fec else 0), (4014, 10 if fec else 0)):
        lib.opus_encoder_ctl(ctypes.c_void_p(st), ctypes.c_int(request), ctypes.c_int32(value))
    t = np.arange(960 * 30)
    voice = (np.sin(2 * np.pi * 220 * t / 48000) * np.sin(2 * np.pi * 3 * t / 48000) * 9000).astype(np.int16)
    buf = ctypes.create_string_buffer(1275)
    out = []
    for i in range(30):
        frame = np.ascontiguousarray(voice[i * 960:(i + 1) * 960])
        n = lib.opus_encode(st, frame.ctypes.data, 960, ctypes.addressof(buf), 1275)
        out.append(ctypes.string_at(ctypes.addressof(buf), n))
    lib.opus_encoder_destroy(st)
    return out


def test_the_decoder_fills_a_loss_from_fec_and_conceals_the_rest() -> None:
    for fec in (True, False):
        packets = _speech_packets(fec)
        c = ReceiveCounters(fec=True)
        jb = LossBuffer(c, window=1)
        dec = LossAwareOpusDecoder()
        frames: list[AudioFrame] = []
        for n, p in enumerate(packets):
            if n in (10, 20, 21):  # one loss, then a run of two
                continue
            _, f = jb.add(_pkt(n, p))
            if f is not None:
                frames += [a for a in dec.decode(f) if isinstance(a, AudioFrame)]
        pts = [int(f.pts or 0) for f in frames]
        assert pts == sorted(pts)
        total = sum(f.samples for f in frames)
        assert total == len(packets) * 960 and pts[0] == 0  # every lost frame filled: no gap left
        assert c.lost == 3
        if fec:
            assert c.recovered == 2 and c.concealed == 1  # 10 and 21 from FEC, 20 concealed
        else:
            assert c.recovered == 0 and c.concealed == 3
        pcm = np.concatenate([f.to_ndarray().reshape(-1)[::2] for f in frames])
        assert analysis.level_dbfs(analysis.to_float(pcm[10 * 960:11 * 960])) > -40  # audio, not silence


def test_a_libopus_decoder_at_48k_conceals_in_its_own_steps() -> None:
    d = OpusDecoder(48000)
    assert len(d.conceal(960)) == 960 and len(d.conceal(130)) == 130
    assert d.recover(b"", 960) is None


def test_the_dialer_sends_fec_only_when_planned_and_asked() -> None:
    import fractions

    from aiortc.rtcrtpparameters import RTCRtpCodecParameters

    from jego_call.media import codecs

    lib = library()
    t = np.arange(960 * 12)
    voice = (np.sin(2 * np.pi * 220 * t / 48000) * 9000).astype(np.int16)

    def packets(enc: codecs.MonoOpusEncoder) -> list[bytes]:
        out: list[bytes] = []
        for i in range(12):
            f = AudioFrame.from_ndarray(voice[i * 960:(i + 1) * 960].reshape(1, -1), format="s16", layout="mono")
            f.sample_rate, f.pts, f.time_base = 48000, i * 960, fractions.Fraction(1, 48000)
            out += enc.encode(f)[0]
        return out

    def lbrr(ps: list[bytes]) -> int:
        return sum(lib.opus_packet_has_lbrr(p, len(p)) == 1 for p in ps)

    opus = RTCRtpCodecParameters(mimeType="audio/opus", clockRate=48000, channels=2, payloadType=96)
    saved = codecs.SETTINGS.fec_loss
    try:
        codecs.install_codecs(opus_fec_loss=10)
        setattr(opus, "remote_fec", True)  # noqa: B010 - what MediaEndpoint notes from useinbandfec=1
        assert lbrr(packets(codecs.get_encoder(opus))) > 5  # type: ignore[arg-type]
        setattr(opus, "remote_fec", False)  # noqa: B010 - the far end said useinbandfec=0
        assert lbrr(packets(codecs.get_encoder(opus))) == 0  # type: ignore[arg-type]
        codecs.install_codecs(opus_fec_loss=0)
        setattr(opus, "remote_fec", True)  # noqa: B010
        assert lbrr(packets(codecs.get_encoder(opus))) == 0  # type: ignore[arg-type]
    finally:
        codecs.install_codecs(opus_fec_loss=saved)

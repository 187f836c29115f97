"""Unit checks of bridge/gateway/pyvoip/ that need no network: TrunkConfig validation (never
0.0.0.0 in Contact/SDP), pyVoIP quarantined in one module, the bounded frame buffer, digest
challenge choice, and pyVoIP's 8-bit audio API switched off."""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np
import pytest

from bridge.gateway.pyvoip import PyVoipTrunk, TrunkConfig
from bridge.gateway.pyvoip.leg import LEG_TRANSITIONS, LegInput, LegMachine, LegState
from bridge.gateway.pyvoip.phone import _Call
from bridge.rtp.media import FrameQueues
from bridge.sip.auth import pick_challenge
from bridge.sip.message import parse_message
from jego_call.errors import InvalidTransition
from jego_call.numbering import e164_of

ROOT = Path(__file__).resolve().parents[2]


def test_defaults_match_the_carrier_trunk_account() -> None:
    cfg = TrunkConfig()
    assert (cfg.server_host, cfg.server_port, cfg.username, cfg.password) == (
        "127.0.0.1", 5060, "jego", "jego-trunk-secret")
    assert cfg.local_host == "127.0.0.1" and cfg.register and cfg.codecs == ("PCMU", "PCMA")


@pytest.mark.parametrize("kw", [
    {"local_host": "0.0.0.0"},     # pyVoIP's default: written verbatim into Contact and c=
    {"local_host": "localhost"},   # must be an address
    {"local_host": "::1"},         # pyVoIP is IPv4 only
    {"codecs": ("G729",)},
    {"codecs": ()},
    {"rtp_port_low": 3000, "rtp_port_high": 2000},
    {"dtmf_payload_type": 8},
    {"t1": 0},
])
def test_bad_config_is_refused(kw: dict[str, object]) -> None:
    with pytest.raises(ValueError, match="local_host|codecs|rtp_port|dtmf_payload_type|t1"):
        TrunkConfig(**kw)  # type: ignore[arg-type]


def test_only_the_pyvoip_package_imports_pyvoip() -> None:
    pattern = re.compile(r"^\s*(import|from)\s+pyVoIP\b", re.M)
    offenders = [str(p.relative_to(ROOT)) for base in ("bridge", "jego_call", "tests")
                 for p in (ROOT / base).rglob("*.py")
                 if "pyvoip" not in p.relative_to(ROOT).parts[:3] and pattern.search(p.read_text(errors="replace"))]
    assert offenders == []


def test_frame_queues_are_bounded_and_drop_oldest() -> None:
    """The leg's send queue (bridge/rtp/media.py FrameQueues, which replaced _FrameBuffer)."""
    buf = FrameQueues(tx_max=3)
    for i in range(5):
        buf.write(bytes([i]) * 320)
    assert len(buf.tx) == 3 and buf.tx_dropped == 2
    got = [buf.exchange(np.zeros(160, dtype=np.int16), False) for _ in range(4)]
    assert [g.tobytes()[0] for g in got[:3] if g is not None] == [2, 3, 4] and got[3] is None


def test_e164_from_uri_user() -> None:
    assert e164_of("+8613800138000") == "+8613800138000"
    assert e164_of("008613800138000") == "+8613800138000"
    assert e164_of("+8613800138000;isub=1") == "+8613800138000"
    assert e164_of("13800138000") == "+8613800138000"
    assert e164_of("anonymous") == "anonymous"
    assert e164_of(None) == ""


def test_challenge_choice_prefers_the_servers_first_supported_algorithm() -> None:
    raw = (b"SIP/2.0 407 Proxy Authentication Required\r\nVia: SIP/2.0/UDP 127.0.0.1:5070;branch=z9hG4bKx\r\n"
           b"From: <sip:a@b>;tag=1\r\nTo: <sip:c@d>;tag=2\r\nCall-ID: x\r\nCSeq: 1 INVITE\r\n"
           b'Proxy-Authenticate: Digest realm="r", nonce="n1", algorithm=SHA-512-256\r\n'
           b'Proxy-Authenticate: Digest realm="r", nonce="n2", algorithm=SHA-256, qop="auth"\r\n'
           b'Proxy-Authenticate: Digest realm="r", nonce="n3", algorithm=MD5\r\n'
           b"Content-Length: 0\r\n\r\n")
    resp = parse_message(raw)
    picked = pick_challenge(resp)  # type: ignore[arg-type]
    assert picked is not None
    name, ch = picked
    assert name == "Proxy-Authorization" and ch.nonce == "n2" and ch.algorithm == "SHA-256"


def test_pyvoip_8_bit_audio_api_is_disabled() -> None:
    with pytest.raises(NotImplementedError):
        _Call.read_audio(object.__new__(_Call))
    with pytest.raises(NotImplementedError):
        _Call.write_audio(object.__new__(_Call), b"\x80" * 160)


def test_trunk_not_started() -> None:
    trunk = PyVoipTrunk(TrunkConfig(register=False))
    assert not trunk.registered
    with pytest.raises(RuntimeError):
        trunk.new_leg("x")


def test_leg_state_table_paths_and_illegal_moves() -> None:
    S, E = LegState, LegInput
    walks = [
        [E.DIAL, E.PROVISIONAL, E.ANSWER, E.END],             # answered, then BYE
        [E.DIAL, E.CHALLENGE, E.PROVISIONAL, E.CANCEL, E.END],  # 407, ringing, CANCEL, 487
        [E.DIAL, E.PROVISIONAL, E.CHALLENGE, E.ANSWER, E.END],  # 401 after a 100
        [E.OFFER, E.ANSWER, E.END],                           # inbound answered
        [E.OFFER, E.END],                                     # inbound rejected or CANCELled
        [E.DIAL, E.END],                                      # Timer B, 4xx-6xx
    ]
    for walk in walks:
        sm = LegMachine()
        for ev in walk:
            sm.apply(ev)
        assert sm.ended and sm.end_event is E.END
    assert all((s, E.END) in LEG_TRANSITIONS for s in S if s is not S.ENDED)
    for state, ev in [(S.ANSWERED, E.DIAL), (S.CANCELLING, E.ANSWER), (S.OFFERED, E.CANCEL),
                      (S.ENDED, E.END), (S.CANCELLING, E.CHALLENGE), (S.IDLE, E.ANSWER)]:
        sm = LegMachine()
        sm.state = state
        with pytest.raises(InvalidTransition):
            sm.apply(ev)
        assert sm.state is state

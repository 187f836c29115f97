"""bridge/gateway/pyvoip/common.py: `TrunkConfig` refuses each bad setting with a message that
names it (the bridge must not start half-configured), and the small helpers of the pyVoIP leg:
whether a message carries SDP, and where a request goes (the first Route, else the target;
RFC 3261 §8.1.2, §12.2.1.1) when that is an IP literal, with the scheme's default port.
"""

from __future__ import annotations

from typing import Any

import pytest

from bridge.gateway.pyvoip.common import ALLOW, ALLOW_METHODS, TrunkConfig, _has_sdp, _is_ip, _target_addr
from bridge.sip.message import parse_message
from bridge.sip.uri import parse_uri


def test_the_defaults_are_a_valid_trunk() -> None:
    cfg = TrunkConfig()
    assert cfg.register and cfg.codecs == ("PCMU", "PCMA") and cfg.local_host == "127.0.0.1"
    assert ALLOW == "INVITE, ACK, CANCEL, BYE, OPTIONS" and "REGISTER" not in ALLOW_METHODS


@pytest.mark.parametrize(("kw", "words"), [
    ({"local_host": "localhost"}, "local_host must be an IP address"),
    ({"local_host": "0.0.0.0"}, "unicast IPv4"),
    ({"local_host": "::1"}, "unicast IPv4"),
    ({"codecs": ()}, "codecs must be a non-empty subset"),
    ({"codecs": ("PCMU", "G729")}, "codecs must be a non-empty subset"),
    ({"rtp_port_low": 0}, "rtp_port_low"),
    ({"rtp_port_low": 20000, "rtp_port_high": 10000}, "rtp_port_low"),
    ({"rtp_port_high": 65536}, "rtp_port_low"),
    ({"local_port": -1}, "SIP ports out of range"),
    ({"local_port": 65536}, "SIP ports out of range"),
    ({"server_port": 0}, "SIP ports out of range"),
    ({"dtmf_payload_type": 95}, "dynamic (96..127)"),
    ({"dtmf_payload_type": 128}, "dynamic (96..127)"),
    ({"t1": 0}, "must be positive"),
    ({"max_calls": 0}, "must be positive"),
    ({"register_expires": 0}, "must be positive"),
    ({"trunk_sources": ("10.0.0.0/8", "carrier.example")}, "not an IP address or network: 'carrier.example'"),
])
def test_a_bad_trunk_setting_is_refused_by_name(kw: dict[str, Any], words: str) -> None:
    with pytest.raises(ValueError, match=words.replace("(", r"\(").replace(")", r"\)").replace(".", r"\.")):
        TrunkConfig(**kw)


@pytest.mark.parametrize("kw", [{"codecs": ("pcma",)}, {"rtp_port_low": 4000, "rtp_port_high": 4000},
                                {"local_port": 0}, {"dtmf_payload_type": 96}, {"dtmf_payload_type": 127},
                                {"trunk_sources": ("192.0.2.1", "10.1.0.0/16", "10.1.2.3/16")},
                                {"local_host": "10.9.8.7"}])
def test_the_edges_that_are_allowed(kw: dict[str, Any]) -> None:
    cfg = TrunkConfig(**kw)   # no ConfigError: the edge is accepted, and kept as given
    for key, value in kw.items():
        assert getattr(cfg, key) == value


@pytest.mark.parametrize(("host", "ip"), [("127.0.0.1", True), ("::1", True), ("2001:db8::1", True),
                                          ("carrier.example", False), ("", False), ("256.1.1.1", False)])
def test_is_ip(host: str, ip: bool) -> None:
    assert _is_ip(host) is ip


def message(content_type: str | None, body: bytes) -> Any:
    head = "INVITE sip:+8613800138000@127.0.0.1 SIP/2.0\r\n" \
        "Via: SIP/2.0/UDP 127.0.0.1:5070;branch=z9hG4bK-1\r\nMax-Forwards: 70\r\n" \
        "From: <sip:jego@127.0.0.1>;tag=a\r\nTo: <sip:+8613800138000@127.0.0.1>\r\nCall-ID: c1\r\n" \
        "CSeq: 1 INVITE\r\n"
    if content_type is not None:
        head += f"Content-Type: {content_type}\r\n"
    return parse_message((head + f"Content-Length: {len(body)}\r\n\r\n").encode() + body)


@pytest.mark.parametrize(("ctype", "body", "sdp"), [
    ("application/sdp", b"v=0\r\n", True), ("Application/SDP; charset=utf-8", b"v=0\r\n", True),
    ("application/sdp", b"", False), ("text/plain", b"v=0\r\n", False), (None, b"", False),
    ("multipart/mixed;boundary=x", b"v=0\r\n", False),
])
def test_has_sdp_needs_the_type_and_a_body(ctype: str | None, body: bytes, sdp: bool) -> None:
    assert _has_sdp(message(ctype, body)) is sdp


@pytest.mark.parametrize(("target", "routes", "want"), [
    ("sip:+8613800138000@127.0.0.1:5080", [], ("127.0.0.1", 5080)),
    ("sip:+8613800138000@127.0.0.1", [], ("127.0.0.1", 5060)),
    ("sips:+8613800138000@127.0.0.1", [], ("127.0.0.1", 5061)),
    ("sip:+8613800138000@carrier.example", [], None),                     # no DNS here
    ("sip:+8613800138000@carrier.example", ["<sip:192.0.2.7:5090;lr>"], ("192.0.2.7", 5090)),
    ("sip:+8613800138000@127.0.0.1", ["<sip:proxy.example;lr>"], None),   # the Route decides, and is a name
    ("sip:+8613800138000@127.0.0.1", ["not a route <<"], ("127.0.0.1", 5060)),   # unparsable: the target
    ("sip:u@127.0.0.1", ["<sip:192.0.2.7;lr>", "<sip:192.0.2.8;lr>"], ("192.0.2.7", 5060)),
])
def test_where_a_request_goes(target: str, routes: list[str], want: tuple[str, int] | None) -> None:
    assert _target_addr(parse_uri(target), routes) == want

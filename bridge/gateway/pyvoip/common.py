"""TrunkConfig, TrunkError and the small SIP helpers the pyVoIP leg shares."""


from __future__ import annotations

import contextlib
import ipaddress
from dataclasses import dataclass

import pyVoIP.VoIP  # noqa: F401  # must come before pyVoIP.SIP (circular import, media-stack.md §1.1)

from bridge.sip.errors import SipError
from bridge.sip.message import SipMessage
from bridge.sip.transaction import Addr
from bridge.sip.uri import SipUri, Uri, parse_name_addr

ALLOW_METHODS = ("INVITE", "ACK", "CANCEL", "BYE", "OPTIONS")  # others: 405 / 501 by the endpoint
ALLOW = ", ".join(ALLOW_METHODS)
FRAME_S = 0.020


class TrunkError(RuntimeError):
    """The trunk could not start (bind or registration failed)."""


@dataclass(frozen=True, slots=True)
class TrunkConfig:
    """How the bridge reaches the carrier trunk. Defaults match config/carrier.toml's account.

    `register=False` is trunk mode (IP-authenticated, no REGISTER). `local_port=0` picks a free
    port. `t1` is RFC 3261's T1 for every transaction timer of the endpoint (Timer B, no answer to
    the INVITE, is 64·T1). `register_timeout`/`deregister_timeout` bound how long start()/stop()
    wait for a (un-)REGISTER; `cancel_timeout` is how long after our CANCEL the INVITE is given up
    without a final response (RFC 3261 §9.1 says 64·T1).
    """

    server_host: str = "127.0.0.1"
    server_port: int = 5060
    username: str = "jego"
    password: str = "jego-trunk-secret"
    realm: str | None = None          # answer only challenges from this realm (None: any)
    local_host: str = "127.0.0.1"     # written into Via/Contact/SDP: never 0.0.0.0
    local_port: int = 0
    rtp_port_low: int = 16384
    rtp_port_high: int = 32767
    register: bool = True
    codecs: tuple[str, ...] = ("PCMU", "PCMA")
    register_expires: int = 300
    max_calls: int = 32
    dtmf_payload_type: int = 101
    caller_id: str | None = None      # default From user of outbound calls (None: username)
    t1: float = 0.5
    register_timeout: float = 8.0
    deregister_timeout: float = 2.0
    cancel_timeout: float = 8.0       # INVITE given up this long after our CANCEL without a 487
    # The receive buffer (phone -> app): adaptive (its delay follows the measured jitter, RFC 3550
    # §6.4.1, and drains what a burst left) from a floor of `jitter_prefetch` frames: 2, one
    # frame more than the app leg's, so a worker starved of CPU for a slot (a loaded machine)
    # plays on instead of concealing (G.711 has no PLC of its own); it still adds ~30 ms in all.
    jitter_prefetch: int = 2
    jitter_capacity: int = 16
    jitter_adaptive: bool = True
    tx_queue_frames: int = 5          # send_audio backlog bound (oldest dropped)
    tx_queue_target: int | None = 1   # standing drain of that backlog down to this (None: off)
    rx_queue_frames: int = 25         # read_audio backlog bound (oldest dropped)
    rtp_initial_sequence: int | None = None  # tests: first RTP sequence number (None: random)
    rtcp_interval_s: float = 5.0      # RFC 3550 §6.2 minimum RTCP report interval
    session_expires_s: int = 1800     # RFC 4028 session interval asked for on outbound calls (0: off)
    user_agent: str = "JegoCall-Bridge (pyVoIP 1.6.8)"
    trunk_sources: tuple[str, ...] = ()  # who may send us SIP: addresses or networks ((): server_host)

    def __post_init__(self) -> None:
        try:
            ip = ipaddress.ip_address(self.local_host)
        except ValueError:
            raise ValueError(f"local_host must be an IP address, got {self.local_host!r}") from None
        if ip.is_unspecified or ip.version != 4:
            raise ValueError("local_host must be a unicast IPv4 address (pyVoIP writes it into Contact and SDP)")
        if not self.codecs or any(c.upper() not in ("PCMU", "PCMA") for c in self.codecs):
            raise ValueError("codecs must be a non-empty subset of ('PCMU', 'PCMA')")
        if not 0 < self.rtp_port_low <= self.rtp_port_high <= 65535:
            raise ValueError("need 0 < rtp_port_low <= rtp_port_high <= 65535")
        if not 0 <= self.local_port <= 65535 or not 0 < self.server_port <= 65535:
            raise ValueError("SIP ports out of range")
        if not 96 <= self.dtmf_payload_type <= 127:
            raise ValueError("dtmf_payload_type must be dynamic (96..127)")
        if self.t1 <= 0 or self.max_calls < 1 or self.register_expires < 1:
            raise ValueError("t1, max_calls and register_expires must be positive")
        for src in self.trunk_sources:
            try:
                ipaddress.ip_network(src, strict=False)
            except ValueError:
                raise ValueError(f"trunk_sources: not an IP address or network: {src!r}") from None


# -------------------------------------------------------------------------------------------------
# helpers

def _is_ip(host: str) -> bool:
    try:
        ipaddress.ip_address(host)
    except ValueError:
        return False
    return True


def _has_sdp(msg: SipMessage) -> bool:
    ctype = msg.headers.get("Content-Type") or ""
    return bool(msg.body) and ctype.split(";")[0].strip().lower() == "application/sdp"


def _target_addr(target: Uri, route_set: list[str]) -> Addr | None:
    """The address of the first Route, else of the target (RFC 3261 §8.1.2, §12.2.1.1), when it
    is an IP literal; None otherwise (no DNS: the caller falls back to the packet's peer)."""
    uri: Uri = target
    if route_set:
        with contextlib.suppress(SipError):
            uri = parse_name_addr(route_set[0], "Route").uri
    if isinstance(uri, SipUri) and _is_ip(uri.host):
        return (uri.host, uri.port or uri.default_port)
    return None

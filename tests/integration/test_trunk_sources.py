"""The bridge's SIP port answers only its trunk ([bridge] trunk_sources, default the trunk host):
an INVITE to a DID from another address (a real UDP peer on 127.0.0.2) gets 403 and nobody
rings, while the same call from the carrier rings the DID's user.
"""

from __future__ import annotations

import socket
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.conftest import LiveServer

from .bridge_util import carrier_call, free_port, phone_server
from .test_dial import Answerer

BOB_DID = "+8675512345678"
CARRIER_CALLER = "+8613800138000"
STRANGER = "+8613912345678"


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LiveServer]:
    s = phone_server(tmp_path_factory.mktemp("doors"), JEGO_BRIDGE_SIP_PORT=str(free_port()))
    yield s
    s.stop()


def request(method: str, sip_port: int, local: tuple[str, int]) -> bytes:
    branch = "z9hG4bK" + uuid.uuid4().hex[:16]
    sdp = (f"v=0\r\no=- 1 1 IN IP4 {local[0]}\r\ns=-\r\nc=IN IP4 {local[0]}\r\nt=0 0\r\n"
           f"m=audio {local[1] + 2} RTP/AVP 0 101\r\na=rtpmap:0 PCMU/8000\r\na=rtpmap:101 telephone-event/8000\r\n")
    body = sdp if method == "INVITE" else ""
    head = (f"{method} sip:{BOB_DID}@127.0.0.1:{sip_port} SIP/2.0\r\n"
            f"Via: SIP/2.0/UDP {local[0]}:{local[1]};branch={branch};rport\r\n"
            f"Max-Forwards: 70\r\nFrom: <sip:{STRANGER}@{local[0]}>;tag={uuid.uuid4().hex[:8]}\r\n"
            f"To: <sip:{BOB_DID}@127.0.0.1>\r\nCall-ID: {uuid.uuid4().hex}@{local[0]}\r\n"
            f"CSeq: 1 {method}\r\nContact: <sip:{STRANGER}@{local[0]}:{local[1]}>\r\n")
    if body:
        head += "Content-Type: application/sdp\r\n"
    return (head + f"Content-Length: {len(body)}\r\n\r\n" + body).encode()


def test_sip_from_a_foreign_address_gets_403_and_rings_nobody(server: LiveServer, tmp_path: Path) -> None:
    sip_port = int(server.env["JEGO_BRIDGE_SIP_PORT"])
    bob = Answerer(server, "bob", ["--echo", "--count", "1"], tmp_path)
    try:
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
            sock.bind(("127.0.0.2", 0))  # not the trunk's address (127.0.0.1)
            sock.settimeout(5)
            for method in ("INVITE", "OPTIONS"):
                sock.sendto(request(method, sip_port, sock.getsockname()), ("127.0.0.1", sip_port))
                data, addr = sock.recvfrom(65536)
                assert data.startswith(b"SIP/2.0 403 "), data[:200]
                assert f"CSeq: 1 {method}".encode() in data and addr == ("127.0.0.1", sip_port)
            sock.settimeout(0.5)  # and nothing else came: no 100 Trying, no 180 Ringing
            with pytest.raises(TimeoutError):
                sock.recvfrom(65536)
        assert "SIP from 127.0.0.2" in server.log() and "not one of the trunk's addresses" in server.log()
        # the trunk itself still rings bob: his one answered call is the carrier's, never the stranger's
        rc, res = carrier_call(server, CARRIER_CALLER, BOB_DID, "--duration", "2")
        assert rc == 0 and res["answered"], res
        assert bob.wait() == 0
        [call] = bob.results()
        assert call["peer"] == CARRIER_CALLER and call["outcome"] == "answered", call
        assert STRANGER not in server.log()
    finally:
        bob.stop()

"""Dialogs between two SipEndpoints wired in memory: 2xx retransmission until ACK, AckTimeout,
bad ACKs, BYE, re-INVITE, route sets (RFC 3261 §12, §13.3.1.4)."""

from __future__ import annotations

from bridge.sip.dialog import Dialog, DialogId
from bridge.sip.endpoint import (
    AckReceived,
    AckTimeout,
    BadAck,
    RequestReceived,
    RequestRejected,
    ResponseReceived,
    SipEndpoint,
    SipEvent,
)
from bridge.sip.message import SipRequest, SipResponse, make_response, new_request, parse_message
from bridge.sip.uri import SipUri

A = ("127.0.0.1", 5070)  # the bridge (UAC)
B = ("127.0.0.1", 5080)  # the carrier (UAS)
SDP = b"v=0\r\no=- 1 1 IN IP4 127.0.0.1\r\ns=-\r\nc=IN IP4 127.0.0.1\r\nt=0 0\r\nm=audio 4000 RTP/AVP 8\r\n"


class Net:
    """Delivers datagrams between two endpoints; `drop_to` silences one direction."""

    def __init__(self) -> None:
        self.a = SipEndpoint(host=A[0], port=A[1])
        self.b = SipEndpoint(host=B[0], port=B[1])
        self.now = 0.0
        self.drop_to: set[tuple[str, int]] = set()
        self.log: list[tuple[float, tuple[str, int], bytes]] = []

    def pump(self) -> None:
        moved = True
        while moved:
            moved = False
            for src, ep in ((A, self.a), (B, self.b)):
                for data, dest in ep.datagrams_to_send(self.now):
                    self.log.append((self.now, dest, data))
                    if dest in self.drop_to:
                        continue
                    target = self.a if dest == A else self.b
                    target.receive_datagram(data, src, self.now)
                    moved = True

    def advance(self, until: float) -> None:
        while True:
            timers = [t for t in (self.a.get_timer(), self.b.get_timer()) if t is not None and t <= until]
            if not timers:
                break
            self.now = min(timers)
            self.a.handle_timer(self.now)
            self.b.handle_timer(self.now)
            self.pump()
        self.now = until


def events(ep: SipEndpoint) -> list[SipEvent]:
    out = []
    while (ev := ep.next_event()) is not None:
        out.append(ev)
    return out


def call(net: Net) -> tuple[RequestReceived, DialogId]:
    """A INVITEs B; B rings. Returns B's RequestReceived and A's INVITE key dialog (early)."""
    invite = new_request("INVITE", "sip:+8613800138000@127.0.0.1:5080", from_="<sip:jego@jego.example>",
                         to="<sip:+8613800138000@carrier.example>", contact="<sip:jego@127.0.0.1:5070>",
                         body=SDP, content_type="application/sdp")
    invite.headers.add("Record-Route", "<sip:edge1.example.com;lr>")
    invite.headers.add("Record-Route", "<sip:edge2.example.com;lr>")
    net.a.send_request(invite, B, net.now)
    net.pump()
    (req_ev,) = events(net.b)
    assert isinstance(req_ev, RequestReceived)
    net.b.respond(req_ev.key, 180, net.now)
    net.pump()
    ringing = [e for e in events(net.a) if isinstance(e, ResponseReceived)]
    assert [e.response.status for e in ringing] == [100, 180]
    assert ringing[1].dialog is not None
    return req_ev, ringing[1].dialog


def test_invite_200_ack_creates_matching_dialogs() -> None:
    net = Net()
    req_ev, early = call(net)
    assert net.a.dialog(early) is not None and net.a.dialog(early).state == "early"  # type: ignore[union-attr]
    net.b.respond(req_ev.key, 200, net.now, body=SDP, content_type="application/sdp")
    net.pump()
    (ok,) = [e for e in events(net.a) if isinstance(e, ResponseReceived)]
    assert ok.response.status == 200 and ok.dialog == early
    (acked,) = events(net.b)
    assert isinstance(acked, AckReceived)
    b_id = acked.dialog
    assert (b_id.call_id, b_id.local_tag, b_id.remote_tag) == (early.call_id, early.remote_tag, early.local_tag)
    ack = acked.request
    assert ack.cseq.seq == req_ev.request.cseq.seq and ack.to_tag == b_id.local_tag
    a_dialog, b_dialog = net.a.dialog(early), net.b.dialog(b_id)
    assert a_dialog is not None and b_dialog is not None
    assert a_dialog.route_set == ["<sip:edge2.example.com;lr>", "<sip:edge1.example.com;lr>"]  # reversed (UAC)
    assert b_dialog.route_set == ["<sip:edge1.example.com;lr>", "<sip:edge2.example.com;lr>"]
    assert str(b_dialog.remote_target) == "sip:jego@127.0.0.1:5070"
    assert [r for r in ack.headers.get_all("Route")] == a_dialog.route_set  # loose routing
    net.advance(40.0)
    assert events(net.a) == [] and events(net.b) == []  # nothing retransmitted after the ACK
    assert not [d for t, dest, d in net.log if t > 0 and d.startswith(b"SIP/2.0 200")]


def test_2xx_retransmitted_until_ack_then_ack_timeout() -> None:
    net = Net()
    req_ev, _ = call(net)
    net.drop_to.add(A)  # the 200 never reaches the caller
    net.b.respond(req_ev.key, 200, net.now, body=SDP, content_type="application/sdp")
    net.pump()
    net.advance(40.0)
    times = [t for t, dest, d in net.log if dest == A and d.startswith(b"SIP/2.0 200")]
    assert times == [0.0, 0.5, 1.5, 3.5, 7.5, 11.5, 15.5, 19.5, 23.5, 27.5, 31.5]  # T1 doubling, cap T2
    timeouts = [e for e in events(net.b) if isinstance(e, AckTimeout)]
    assert len(timeouts) == 1 and net.b.dialog(timeouts[0].dialog) is not None


def test_ack_with_wrong_to_tag_is_flagged_and_retransmission_continues() -> None:
    net = Net()
    req_ev, _ = call(net)
    net.drop_to.add(A)
    net.b.respond(req_ev.key, 200, net.now)
    net.pump()
    ok = parse_message([d for _, dest, d in net.log if d.startswith(b"SIP/2.0 200")][0])
    assert isinstance(ok, SipResponse)
    wrong = ok.headers.get("To", "").replace(f"tag={ok.to_tag}", "tag=not-ours")  # type: ignore[union-attr]
    bad_ack = (f"ACK sip:+8613800138000@127.0.0.1:5080 SIP/2.0\r\nVia: SIP/2.0/UDP 127.0.0.1:5070;"
               f"branch=z9hG4bKbadack\r\nMax-Forwards: 70\r\nTo: {wrong}\r\nFrom: {ok.headers.get('From')}\r\n"
               f"Call-ID: {ok.call_id}\r\nCSeq: {ok.cseq.seq} ACK\r\nContent-Length: 0\r\n\r\n").encode()
    net.now = 1.0
    net.b.receive_datagram(bad_ack, A, net.now)
    (bad,) = events(net.b)
    assert isinstance(bad, BadAck) and bad.dialog is not None and "To-tag" in bad.reason
    assert bad.dialog.local_tag == ok.to_tag
    net.advance(5.0)
    assert [t for t, dest, d in net.log if dest == A and d.startswith(b"SIP/2.0 200")] == [0.0, 0.5, 1.5, 3.5]
    good_ack = bad_ack.replace(b"tag=not-ours", f"tag={ok.to_tag}".encode())
    net.b.receive_datagram(good_ack, A, 5.0)
    assert [type(e) for e in events(net.b)] == [AckReceived]
    net.advance(40.0)
    assert [t for t, dest, d in net.log if dest == A and d.startswith(b"SIP/2.0 200")][-1] == 3.5
    assert not [e for e in events(net.b) if isinstance(e, AckTimeout)]


def test_ack_with_wrong_cseq_is_flagged() -> None:
    net = Net()
    req_ev, _ = call(net)
    net.drop_to.add(A)
    net.b.respond(req_ev.key, 200, net.now)
    net.pump()
    ok = parse_message([d for _, _, d in net.log if d.startswith(b"SIP/2.0 200")][0])
    assert isinstance(ok, SipResponse)
    ack = (f"ACK sip:x@127.0.0.1:5080 SIP/2.0\r\nVia: SIP/2.0/UDP 127.0.0.1:5070;branch=z9hG4bKa2\r\n"
           f"To: {ok.headers.get('To')}\r\nFrom: {ok.headers.get('From')}\r\nCall-ID: {ok.call_id}\r\n"
           f"CSeq: {ok.cseq.seq + 5} ACK\r\nContent-Length: 0\r\n\r\n").encode()
    net.b.receive_datagram(ack, A, 0.1)
    (bad,) = events(net.b)
    assert isinstance(bad, BadAck) and "CSeq" in bad.reason


def test_retransmitted_2xx_is_acked_again_without_new_event() -> None:
    net = Net()
    req_ev, _ = call(net)
    net.drop_to.add(B)  # our ACKs get lost: B keeps retransmitting the 200
    net.b.respond(req_ev.key, 200, net.now)
    net.pump()
    net.advance(2.0)
    oks = [e for e in events(net.a) if isinstance(e, ResponseReceived) and e.response.status == 200]
    assert len(oks) == 1
    acks = [t for t, dest, d in net.log if dest == B and d.startswith(b"ACK ")]
    assert acks == [0.0, 0.5, 1.5]
    assert len({d for _, dest, d in net.log if dest == B and d.startswith(b"ACK ")}) == 1  # the same ACK


def test_bye_ends_both_dialogs() -> None:
    net = Net()
    req_ev, a_id = call(net)
    net.b.respond(req_ev.key, 200, net.now)
    net.pump()
    events(net.a)
    (acked,) = events(net.b)
    assert isinstance(acked, AckReceived)
    key = net.a.send_in_dialog(a_id, "BYE", net.now)
    net.pump()
    (bye,) = events(net.b)
    assert isinstance(bye, RequestReceived) and bye.dialog == acked.dialog and bye.request.method == "BYE"
    assert bye.request.cseq.seq == req_ev.request.cseq.seq + 1
    # Request-URI = B's Contact (remote target); Route = the reversed Record-Route (loose routing)
    assert isinstance(bye.request.uri, SipUri) and str(bye.request.uri) == "sip:127.0.0.1:5080"
    assert bye.request.headers.get_all("Route") == ["<sip:edge2.example.com;lr>", "<sip:edge1.example.com;lr>"]
    net.b.respond(bye.key, 200, net.now)
    net.pump()
    (done,) = events(net.a)
    assert isinstance(done, ResponseReceived) and done.key == key and done.response.status == 200
    assert net.a.dialog(a_id) is None and net.b.dialog(acked.dialog) is None


def test_reinvite_and_lower_cseq_gets_500() -> None:
    net = Net()
    req_ev, a_id = call(net)
    net.b.respond(req_ev.key, 200, net.now)
    net.pump()
    events(net.a)
    (acked,) = events(net.b)
    assert isinstance(acked, AckReceived)
    net.a.send_in_dialog(a_id, "INVITE", net.now, body=SDP, content_type="application/sdp")
    net.pump()
    (reinvite,) = events(net.b)
    assert isinstance(reinvite, RequestReceived) and reinvite.dialog == acked.dialog
    net.b.respond(reinvite.key, 200, net.now)
    net.pump()
    (ok,) = [e for e in events(net.a) if isinstance(e, ResponseReceived) and e.response.status == 200]
    (ack2,) = events(net.b)
    assert isinstance(ack2, AckReceived) and ack2.request.cseq.seq == reinvite.request.cseq.seq
    # an in-dialog request with an older CSeq: 500 (§12.2.2)
    stale = reinvite.request.serialise().replace(
        f"CSeq: {reinvite.request.cseq.seq} INVITE".encode(), f"CSeq: {req_ev.request.cseq.seq} INFO".encode()
    ).replace(b"INVITE sip:", b"INFO sip:").replace(b"branch=z9hG4bK", b"branch=z9hG4bKstale")
    net.b.receive_datagram(stale, A, net.now)
    (rejected,) = events(net.b)
    assert isinstance(rejected, RequestRejected) and rejected.status == 500


def test_dialog_strict_route_and_request_building() -> None:
    inv = new_request("INVITE", "sip:callee@example.com", from_="<sip:a@example.com>",
                      to="<sip:callee@example.com>", contact="<sip:a@192.0.2.1>")
    resp = make_response(inv, 200, to_tag="t9", headers=[("Contact", "<sip:callee@192.0.2.9:5062>"),
                                                         ("Record-Route", "<sip:strict.example.com>")])
    dialog = Dialog.as_uac(inv, resp, ("192.0.2.9", 5062), reliable=False)
    bye = dialog.create_request("BYE")
    assert isinstance(bye, SipRequest) and str(bye.uri) == "sip:strict.example.com"  # strict routing
    assert bye.headers.get_all("Route") == ["<sip:callee@192.0.2.9:5062>"]
    assert bye.cseq.seq == inv.cseq.seq + 1 and bye.to_tag == "t9" and bye.from_tag == inv.from_tag
    info = dialog.create_request("INFO", body=b"Signal=1\r\n", content_type="application/dtmf-relay")
    assert info.cseq.seq == inv.cseq.seq + 2 and info.headers.get("Content-Type") == "application/dtmf-relay"
    ack = dialog.create_ack()
    assert ack.cseq.seq == inv.cseq.seq and ack.cseq.method == "ACK"

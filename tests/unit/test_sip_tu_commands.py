"""What a UAC/UAS transaction user (the pyVoIP leg, the carrier) asks of SipEndpoint, in virtual
time: the TU's own 2xx ACK (to a chosen address, re-sent on 2xx retransmission, RFC 3261
§13.2.2.4), an authenticated re-sent INVITE/REGISTER (§22.2), CANCEL with Reason and the §9.1
give-up, a stray 2xx ACKed and BYEd (§15), re-INVITE answered on the caller's dialog (§14.2)."""

from __future__ import annotations

from bridge.sip.auth import AuthResult, DigestChallenger, authorize_retry, parse_credentials, pick_challenge
from bridge.sip.dialog import DialogId
from bridge.sip.endpoint import (
    AckReceived,
    AckTimeout,
    EndpointConfig,
    RequestReceived,
    ResponseReceived,
    SipEndpoint,
    SipEvent,
    TransactionTimeout,
    UnmatchedResponse,
)
from bridge.sip.message import SipRequest, SipResponse, make_response, new_request, parse_message
from bridge.sip.transaction import TransactionKey

A = ("127.0.0.1", 5070)   # the bridge (UAC)
B = ("127.0.0.1", 5080)   # the carrier (UAS), where the INVITE goes
C = ("127.0.0.1", 5090)   # the UAS's Contact (remote target): in-dialog requests go here
SDP = b"v=0\r\no=- 1 1 IN IP4 127.0.0.1\r\ns=-\r\nc=IN IP4 127.0.0.1\r\nt=0 0\r\nm=audio 4000 RTP/AVP 0\r\n"


class Net:
    """Endpoints by address; B also listens on C. `drop_to` loses datagrams to an address."""

    def __init__(self, a_config: EndpointConfig | None = None) -> None:
        self.a = SipEndpoint(a_config or EndpointConfig(auto_ack=False), host=A[0], port=A[1])
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

    def sent(self, dest: tuple[str, int], start: bytes) -> list[tuple[float, SipRequest | SipResponse]]:
        return [(t, parse_message(d)) for t, to, d in self.log if to == dest and d.startswith(start)]


def events(ep: SipEndpoint) -> list[SipEvent]:
    out = []
    while (ev := ep.next_event()) is not None:
        out.append(ev)
    return out


def invite() -> SipRequest:
    return new_request("INVITE", "sip:+8613800138000@127.0.0.1:5080", from_="<sip:jego@127.0.0.1>",
                       to="<sip:+8613800138000@127.0.0.1>", contact="<sip:jego@127.0.0.1:5070>",
                       body=SDP, content_type="application/sdp")


def ringing(net: Net) -> tuple[TransactionKey, RequestReceived]:
    """A INVITEs B, B rings (180 with tag). Returns A's INVITE key and B's RequestReceived."""
    key = net.a.send_request(invite(), B, net.now)
    net.pump()
    (req_ev,) = events(net.b)
    assert isinstance(req_ev, RequestReceived)
    net.b.respond(req_ev.key, 180, net.now)
    net.pump()
    assert [e.response.status for e in events(net.a) if isinstance(e, ResponseReceived)] == [100, 180]
    return key, req_ev


# --- the TU's own 2xx ACK ------------------------------------------------------------------------

def test_tu_acks_the_2xx_to_its_remote_target_and_the_endpoint_re_acks_retransmissions() -> None:
    net = Net()
    _, req_ev = ringing(net)
    net.drop_to.update({A, C})  # first the 200 is lost, then every ACK
    net.b.respond(req_ev.key, 200, net.now, body=SDP, content_type="application/sdp")
    net.pump()
    net.drop_to.discard(A)
    net.advance(0.5)  # B's first 2xx retransmission reaches A
    (ok,) = [e for e in events(net.a) if isinstance(e, ResponseReceived)]
    assert ok.response.status == 200 and ok.dialog is not None
    assert not net.sent(B, b"ACK") and not net.sent(C, b"ACK")  # auto_ack=False: nothing yet
    net.a.send_ack(ok.dialog, net.now, dest=C)
    net.pump()
    net.advance(40.0)  # B keeps retransmitting (its ACKs are lost), A re-ACKs each, to C
    acks = net.sent(C, b"ACK")
    oks_to_a = [t for t, _ in net.sent(A, b"SIP/2.0 200")]
    assert [t for t, _ in acks] == [t for t in oks_to_a if t >= 0.5]
    assert len(acks) >= 8 and not net.sent(B, b"ACK")
    first = acks[0][1]
    assert isinstance(first, SipRequest)
    assert first.to_tag == ok.response.to_tag and first.cseq.seq == ok.response.cseq.seq
    assert first.top_via.branch != ok.response.top_via.branch  # the 2xx ACK is its own transaction
    assert len({d for _, to, d in net.log if to == C and d.startswith(b"ACK")}) == 1  # the same ACK
    assert [e for e in events(net.a) if isinstance(e, ResponseReceived)] == []  # not reported again
    # after Timer M (64*T1) the INVITE transaction is gone: the dialog still re-ACKs, to C
    assert net.a.get_timer() is None
    ok_wire = [d for _, to, d in net.log if to == A and d.startswith(b"SIP/2.0 200")][0]
    net.a.receive_datagram(ok_wire, B, 50.0)
    assert net.a.datagrams_to_send(50.0) == [(net.sent(C, b"ACK")[0][1].serialise(), C)]
    assert events(net.a) == []


# --- digest: the re-sent, authenticated request -----------------------------------------------

def test_authorize_retry_builds_the_next_invite_and_the_407_is_acked_by_its_transaction() -> None:
    ep = SipEndpoint(host=A[0], port=A[1])
    challenger = DigestChallenger(b"k" * 32, "carrier.jego.test")
    key = ep.send_request(invite(), B, 0.0)
    (sent,) = [parse_message(d) for d, _ in ep.datagrams_to_send(0.0)]
    assert isinstance(sent, SipRequest)
    challenge = make_response(sent, 407, to_tag="c1",
                              headers=[("Proxy-Authenticate", v) for v in challenger.challenge(0.0)])
    ep.receive_datagram(challenge.serialise(), B, 0.1)
    (ack,) = [parse_message(d) for d, _ in ep.datagrams_to_send(0.1)]
    assert isinstance(ack, SipRequest) and ack.method == "ACK"  # §17.1.1.3, by the transaction
    assert ack.top_via.branch == sent.top_via.branch and ack.to_tag == "c1"
    (ev,) = events(ep)
    assert isinstance(ev, ResponseReceived) and ev.key == key and ev.response.status == 407
    retry = authorize_retry(ep.request_for(key), ev.response, username="jego", password="secret")
    assert retry is not None
    ep.send_request(retry, B, 0.1)
    (second,) = [parse_message(d) for d, _ in ep.datagrams_to_send(0.1)]
    assert isinstance(second, SipRequest)
    assert second.cseq.seq == sent.cseq.seq + 1 and second.call_id == sent.call_id
    assert second.from_tag == sent.from_tag and second.top_via.branch != sent.top_via.branch
    assert len(second.vias) == 1 and second.body == sent.body
    creds = parse_credentials(second.headers.get("Proxy-Authorization"))
    assert creds is not None and creds.uri == str(second.uri) and creds.realm == "carrier.jego.test"
    assert challenger.verify(creds, method="INVITE", password="secret", now=0.2) == AuthResult.OK
    # a second challenge replaces the credentials instead of adding a second set
    again = authorize_retry(retry, challenge, username="jego", password="secret")
    assert again is not None and again.headers.count("Proxy-Authorization") == 1
    assert again.cseq.seq == sent.cseq.seq + 2


def test_authorize_retry_respects_realm_and_algorithms() -> None:
    req = new_request("REGISTER", "sip:127.0.0.1:5080", from_="<sip:jego@127.0.0.1>", to="<sip:jego@127.0.0.1>")
    req.headers.add("Via", "SIP/2.0/UDP 127.0.0.1:5070;branch=z9hG4bKreg1")
    resp = make_response(req, 401, to_tag="r", headers=[
        ("WWW-Authenticate", 'Digest realm="other", nonce="n0", algorithm=MD5'),
        ("WWW-Authenticate", 'Digest realm="r", nonce="n1", algorithm=SHA-512-256'),
        ("WWW-Authenticate", 'Digest realm="r", nonce="n2", algorithm=SHA-256, qop="auth"'),
    ])
    assert authorize_retry(req, resp, username="u", password="p", realm="nowhere") is None
    picked = pick_challenge(resp, realm="r")
    assert picked is not None and picked[0] == "Authorization" and picked[1].nonce == "n2"
    retry = authorize_retry(req, resp, username="u", password="p", realm="r")
    assert retry is not None and retry.method == "REGISTER" and "Via" not in retry.headers
    creds = parse_credentials(retry.headers.get("Authorization"))
    assert creds is not None and creds.nonce == "n2" and creds.algorithm == "SHA-256"


# --- CANCEL ------------------------------------------------------------------------------------

def test_cancel_waits_for_a_provisional_carries_reason_and_gives_up_after_the_given_time() -> None:
    ep = SipEndpoint(host=A[0], port=A[1])
    key = ep.send_request(invite(), B, 0.0)
    (inv,) = [parse_message(d) for d, _ in ep.datagrams_to_send(0.0)]
    assert isinstance(inv, SipRequest)
    cancel_key = ep.send_cancel(key, 0.1, headers=[("Reason", "Q.850;cause=31")], give_up_after=8.0)
    assert cancel_key is not None
    assert [d for d, _ in ep.datagrams_to_send(0.1)] == []  # §9.1: not before a provisional
    ep.receive_datagram(make_response(inv, 180, to_tag="r1").serialise(), B, 0.2)
    (cancel,) = [parse_message(d) for d, _ in ep.datagrams_to_send(0.2)]
    assert isinstance(cancel, SipRequest) and cancel.method == "CANCEL"
    assert cancel.top_via.branch == inv.top_via.branch and cancel.cseq.seq == inv.cseq.seq
    assert cancel.to_tag is None and cancel.headers.get("Reason") == "Q.850;cause=31"
    early = [e for e in events(ep) if isinstance(e, ResponseReceived)]
    assert early[0].dialog is not None and ep.dialog(early[0].dialog) is not None
    ep.receive_datagram(make_response(cancel, 200, to_tag="r1").serialise(), B, 0.3)
    assert [e.response.status for e in events(ep) if isinstance(e, ResponseReceived)] == [200]
    # no 487 ever comes: the INVITE is given up 8 s after the CANCEL, its early dialog with it
    timeouts: list[tuple[float, SipEvent]] = []
    while (t := ep.get_timer()) is not None and t <= 40.0:
        ep.handle_timer(t)
        ep.datagrams_to_send(t)
        timeouts += [(t, e) for e in events(ep) if isinstance(e, TransactionTimeout)]
    assert timeouts == [(8.1, TransactionTimeout(key))]
    assert ep.dialog(early[0].dialog) is None and ep.get_timer() is None


def test_cancel_give_up_defaults_to_64_t1_and_a_final_response_stops_it() -> None:
    ep = SipEndpoint(host=A[0], port=A[1])
    key = ep.send_request(invite(), B, 0.0)
    (inv,) = [parse_message(d) for d, _ in ep.datagrams_to_send(0.0)]
    assert isinstance(inv, SipRequest)
    ep.receive_datagram(make_response(inv, 100).serialise(), B, 0.05)
    ep.send_cancel(key, 1.0)
    assert ep.get_timer() is not None
    last = 0.0
    while (t := ep.get_timer()) is not None and t <= 1.0 + 32.0 - 0.01:
        ep.handle_timer(t)
        last = t
    assert not [e for e in events(ep) if isinstance(e, TransactionTimeout)] and last < 33.0
    ep.receive_datagram(make_response(inv, 487, to_tag="r").serialise(), B, 20.0)
    assert [e.response.status for e in events(ep) if isinstance(e, ResponseReceived)][-1] == 487
    while (t := ep.get_timer()) is not None:
        ep.handle_timer(t)
    assert not [e for e in events(ep) if isinstance(e, TransactionTimeout) and e.key == key]


# --- a stray 2xx --------------------------------------------------------------------------------

def test_stray_2xx_is_acked_and_byed_through_a_dialog_built_from_it() -> None:
    net = Net()
    key, req_ev = ringing(net)
    net.a.send_cancel(key, net.now, give_up_after=1.0)
    net.drop_to.add(A)  # B's 200 (CANCEL) and 487 never arrive
    net.pump()
    net.advance(1.5)
    assert TransactionTimeout(key) in events(net.a)
    net.drop_to.discard(A)
    events(net.b)
    # the callee answers after all (it never saw the CANCEL): a 2xx for a forgotten INVITE
    inv = req_ev.request
    ok = make_response(inv, 200, to_tag="late", headers=[("Contact", "<sip:uas@127.0.0.1:5090>")],
                       body=SDP, content_type="application/sdp")
    net.a.receive_datagram(ok.serialise(), B, net.now)
    (stray,) = events(net.a)
    assert isinstance(stray, UnmatchedResponse)
    did = net.a.accept_stray_2xx(stray.response, stray.addr, net.now, dest=C)
    assert did == DialogId(inv.call_id, inv.from_tag or "", "late")
    bye_key = net.a.send_in_dialog(did, "BYE", net.now, dest=C, headers=(("Reason", "Q.850;cause=16"),))
    net.drop_to.add(C)
    net.pump()
    (ack,) = [m for _, m in net.sent(C, b"ACK")]
    assert isinstance(ack, SipRequest) and ack.to_tag == "late" and ack.cseq.seq == inv.cseq.seq
    assert str(ack.uri) == "sip:uas@127.0.0.1:5090" and ack.from_tag == inv.from_tag
    # the same 2xx again: re-ACKed (no new dialog, same bytes)
    net.a.receive_datagram(ok.serialise(), B, net.now)
    assert [e for e in events(net.a) if not isinstance(e, UnmatchedResponse)] == []
    net.advance(net.now + 2.0)
    byes = [m for _, m in net.sent(C, b"BYE")]
    assert len(byes) >= 3 and len({m.top_via.branch for m in byes}) == 1  # Timer E retransmits
    bye = byes[0]
    assert isinstance(bye, SipRequest) and bye.cseq.seq == inv.cseq.seq + 1 and bye.to_tag == "late"
    net.a.receive_datagram(make_response(bye, 200).serialise(), C, net.now)
    (done,) = [e for e in events(net.a) if isinstance(e, ResponseReceived) and e.key.method == "BYE"]
    assert done.key == bye_key and done.response.status == 200 and net.a.dialog(did) is None


def test_accept_stray_2xx_refuses_what_is_not_a_2xx_to_invite() -> None:
    ep = SipEndpoint()
    req = new_request("OPTIONS", "sip:127.0.0.1", from_="<sip:a@127.0.0.1>", to="<sip:b@127.0.0.1>")
    req.headers.add("Via", "SIP/2.0/UDP 127.0.0.1:5070;branch=z9hG4bKo1")
    assert ep.accept_stray_2xx(make_response(req, 200, to_tag="x"), B, 0.0) is None
    assert ep.datagrams_to_send(0.0) == [] and ep.dialogs == {}


# --- re-INVITE from the callee, answered by the caller -------------------------------------------

def test_reinvite_on_the_callers_dialog_is_answered_retransmitted_until_ack_then_ack_timeout() -> None:
    net = Net(EndpointConfig(auto_ack=True))
    _, req_ev = ringing(net)
    net.b.respond(req_ev.key, 200, net.now, body=SDP, content_type="application/sdp")
    net.pump()
    (ok,) = [e for e in events(net.a) if isinstance(e, ResponseReceived)]
    (acked,) = events(net.b)
    assert isinstance(acked, AckReceived) and ok.dialog is not None
    # the callee puts us on hold: a re-INVITE in its dialog
    net.b.send_in_dialog(acked.dialog, "INVITE", net.now, body=SDP.replace(b"RTP/AVP 0", b"RTP/AVP 0\r\na=sendonly"),
                         content_type="application/sdp", dest=A)
    net.pump()
    (reinvite,) = events(net.a)
    assert isinstance(reinvite, RequestReceived) and reinvite.dialog == ok.dialog
    net.drop_to.add(B)  # the 200 is lost: A retransmits it (§13.3.1.4)
    net.a.respond(reinvite.key, 200, net.now, body=SDP, content_type="application/sdp")
    net.pump()
    net.advance(net.now + 1.6)
    oks = [t for t, m in net.sent(B, b"SIP/2.0 200") if isinstance(m, SipResponse) and m.cseq.method == "INVITE"]
    assert len(oks) == 3
    net.drop_to.discard(B)
    net.advance(net.now + 2.0)
    acks = [e for e in events(net.a) if isinstance(e, AckReceived)]
    assert len(acks) == 1 and acks[0].dialog == ok.dialog
    assert acks[0].request.cseq.seq == reinvite.request.cseq.seq
    net.advance(net.now + 40.0)
    assert not [e for e in events(net.a) if isinstance(e, AckTimeout)]
    # a second re-INVITE whose 200 is never ACKed: AckTimeout for the caller's dialog
    net.b.send_in_dialog(acked.dialog, "INVITE", net.now, body=SDP, content_type="application/sdp", dest=A)
    net.pump()
    (again,) = events(net.a)
    assert isinstance(again, RequestReceived)
    net.drop_to.add(B)
    net.a.respond(again.key, 200, net.now, body=SDP, content_type="application/sdp")
    net.pump()
    net.advance(net.now + 40.0)
    assert [e for e in events(net.a) if isinstance(e, AckTimeout)] == [AckTimeout(ok.dialog)]
